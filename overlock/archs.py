"""Architectures of OverLoCK: the official hyper-parameters and the checks of
a user-given arch dict."""
import copy
from typing import Dict, Union

from .layers import DILATED_BRANCHES

__all__ = ['ARCH_SETTINGS', 'ARCH_DEFAULTS', 'resolve_arch', 'check_arch']

#: Hyper-parameters of the official models (``overlock_{xt,t,s,b}``).
ARCH_SETTINGS: Dict[str, dict] = {
    'xt': dict(
        depths=[2, 2, 3, 2],
        sub_depths=[6, 2],
        embed_dims=[56, 112, 256, 336],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[4, 6],
        sub_mlp_ratios=[3, 3]),
    't': dict(
        depths=[4, 4, 6, 2],
        sub_depths=[12, 2],
        embed_dims=[64, 128, 256, 512],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[4, 8],
        sub_mlp_ratios=[3, 3]),
    's': dict(
        depths=[6, 6, 8, 3],
        sub_depths=[16, 3],
        embed_dims=[64, 128, 320, 512],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[8, 16],
        sub_mlp_ratios=[3, 3]),
    'b': dict(
        depths=[8, 8, 10, 4],
        sub_depths=[20, 4],
        embed_dims=[80, 160, 384, 576],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[6, 9],
        sub_mlp_ratios=[3, 3]),
}

#: Fields shared by all official archs; an arch dict may override them.
ARCH_DEFAULTS = dict(
    ls_init_values=[None, None, 1., 1.], res_scale=True, smk_size=5)


def resolve_arch(arch: Union[str, dict]) -> dict:
    """The full, checked arch dict of a name (``'t'``, ``'overlock_t'``) or
    of a (partial) arch dict; clear errors for anything else."""
    if isinstance(arch, str):
        key = arch.lower()
        if key.startswith('overlock_'):
            key = key[len('overlock_'):]
        if key not in ARCH_SETTINGS:
            raise ValueError(
                f'Unknown OverLoCK arch {arch!r}; valid names are '
                f'{sorted(ARCH_SETTINGS)}, or pass a dict with the fields '
                f'{sorted(ARCH_SETTINGS["t"])}.')
        cfg = copy.deepcopy(ARCH_SETTINGS[key])
    elif isinstance(arch, dict):
        required = set(ARCH_SETTINGS['t'])
        missing = sorted(required - set(arch))
        if missing:
            raise ValueError(f'The OverLoCK arch dict lacks the fields '
                             f'{missing}; it needs {sorted(required)}.')
        unknown = sorted(set(arch) - required - set(ARCH_DEFAULTS))
        if unknown:
            raise ValueError(
                f'Unknown fields {unknown} in the OverLoCK arch dict; valid '
                f'fields are {sorted(required | set(ARCH_DEFAULTS))}.')
        cfg = copy.deepcopy(dict(arch))
    else:
        raise TypeError(f'arch must be a name or a dict, got '
                        f'{type(arch).__name__}')
    for k, v in ARCH_DEFAULTS.items():
        cfg.setdefault(k, copy.deepcopy(v))
    check_arch(cfg)
    return cfg


def check_arch(cfg: dict) -> None:
    """Raise ``ValueError`` naming the field if ``cfg`` cannot build a
    network."""
    lengths = dict(
        depths=4, embed_dims=4, kernel_sizes=4, mlp_ratios=4,
        ls_init_values=4, sub_depths=2, sub_num_heads=2, sub_mlp_ratios=2)
    for name, n in lengths.items():
        value = cfg[name]
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f'arch field {name!r} must be a list of {n} '
                             f'values, got {value!r}')
    ints = ('depths', 'embed_dims', 'kernel_sizes', 'sub_depths',
            'sub_num_heads')
    for name in ints + ('mlp_ratios', 'sub_mlp_ratios'):
        kinds = (int, ) if name in ints else (int, float)
        if not all(isinstance(v, kinds) and not isinstance(v, bool) and v > 0
                   for v in cfg[name]):
            what = 'ints' if name in ints else 'numbers'
            raise ValueError(f'arch field {name!r} must be a list of '
                             f'positive {what}, got {cfg[name]!r}')
    for name in ('smk_size', ):
        if not isinstance(cfg[name], int) or isinstance(cfg[name], bool):
            raise ValueError(f'arch field {name!r} must be an int, got '
                             f'{cfg[name]!r}')
    if not isinstance(cfg['res_scale'], bool):
        raise ValueError(f"arch field 'res_scale' must be True or False, got "
                         f"{cfg['res_scale']!r}")
    dims, heads = cfg['embed_dims'], cfg['sub_num_heads']
    if any(d <= 0 for d in cfg['depths']) or any(
            d <= 0 for d in cfg['sub_depths']):
        raise ValueError(f'depths and sub_depths must be positive, got '
                         f'{cfg["depths"]} and {cfg["sub_depths"]}')
    if dims[0] % 2:
        raise ValueError(f'embed_dims[0] must be even (the stem halves it), '
                         f'got {dims[0]}')
    if dims[3] % 4:
        raise ValueError(f'embed_dims[3] must be divisible by 4 (the context '
                         f'has embed_dims[3] // 4 channels), got {dims[3]}')
    for stage, dim, h in ((3, dims[2], heads[0]), (4, dims[3], heads[1])):
        if h <= 0 or dim % (4 * h):
            raise ValueError(
                f'stage {stage}: embed_dims {dim} must be divisible by 4 x '
                f'sub_num_heads ({h}): ContMix splits the channels into two '
                f'kernels x 2 x {h} groups. Change embed_dims or '
                f'sub_num_heads.')
    for k in cfg['kernel_sizes']:
        if k not in DILATED_BRANCHES:
            raise ValueError(f'kernel_sizes must be in '
                             f'{sorted(DILATED_BRANCHES)}, got {k}')
    smk = cfg['smk_size']
    if smk % 2 == 0 or smk < 3 or smk > min(cfg['kernel_sizes'][2:]):
        raise ValueError(
            f'smk_size must be odd, >= 3 and at most the stage-3/4 kernel '
            f'sizes {cfg["kernel_sizes"][2:]}, got {smk}')
