"""Reading a trained OverLoCK checkpoint back into a model, and turning it
into the re-parameterised (deploy) form.

* :func:`find_backbone` locates the OverLoCK tensors of an official / timm
  classifier, or of a whole mmdet / mmseg / mmpretrain model (``backbone.``);
* :func:`arch_from_state_dict` reads the arch (an official name, or the full
  arch dict of a custom one) from the tensor names and shapes;
* :func:`model_kwargs` adds the kind (classification, detection,
  segmentation) and the constructor arguments that rebuild the model;
* :func:`reparameterize_checkpoint` merges the dilated branches with
  :meth:`OverLoCK.reparameterize` and checks the outputs are unchanged.

Imports only torch and :mod:`overlock`; the command-line tool is
``tools/model_converters/reparameterize.py``.
"""
import copy
import logging
import math
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from .archs import ARCH_DEFAULTS, ARCH_SETTINGS, resolve_arch
from .checkpoint import CheckpointError
from .config import options
from .model import OverLoCK

logger = logging.getLogger(__name__)

__all__ = [
    'find_backbone', 'arch_from_state_dict', 'model_kwargs',
    'build_from_state_dict', 'reparameterize_checkpoint', 'weights_of'
]

#: Where whole-model checkpoints keep the OverLoCK tensors, tried in order.
BACKBONE_PREFIXES = ('', 'backbone.', 'module.', 'module.backbone.',
                     '_orig_mod.', 'model.backbone.')
_ANCHOR = 'patch_embed1.0.weight'
#: Top-level modules of OverLoCK (a whole classifier may hold others, e.g.
#: an mmpretrain ``data_preprocessor``).
_OWN = re.compile(r'(patch_embed[1-4x]|blocks[1-4]|sub_blocks[34]|'
                  r'high_level_proj|h_proj|extra_norm|head|aux_head)\.')
#: Containers of the weights in a checkpoint file, tried in order.
WEIGHT_KEYS = ('state_dict', 'model', 'state_dict_ema', 'model_ema')


def weights_of(checkpoint) -> Tuple[Optional[str], Dict[str, torch.Tensor]]:
    """``(container key, state_dict)`` of a loaded checkpoint.

    The key is ``None`` when the checkpoint is a bare state_dict.

    Raises:
        CheckpointError: No mapping of names to tensors was found.
    """
    if isinstance(checkpoint, Mapping):
        for key in WEIGHT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                return key, dict(checkpoint[key])
        if checkpoint and all(
                isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return None, dict(checkpoint)
    raise CheckpointError(
        'The checkpoint holds no state_dict: expected a mapping of tensor '
        f'names to tensors, bare or under one of {list(WEIGHT_KEYS)}.')


def find_backbone(state_dict: Mapping[str, torch.Tensor]
                  ) -> Tuple[str, Dict[str, torch.Tensor]]:
    """``(prefix, tensors)`` of the OverLoCK network in ``state_dict``.

    ``tensors`` has the prefix removed; other keys of ``state_dict`` (necks,
    heads of detectors) are not in it.

    Raises:
        CheckpointError: No OverLoCK stem (``*patch_embed1.0.weight``) found.
    """
    for prefix in BACKBONE_PREFIXES:
        if prefix + _ANCHOR in state_dict:
            return prefix, {
                k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix) and _OWN.match(k[len(prefix):])}
    tops = sorted({k.split('.')[0] for k in state_dict})[:8]
    raise CheckpointError(
        f'Not an OverLoCK checkpoint: no key is {_ANCHOR!r} under one of the '
        f'prefixes {[p for p in BACKBONE_PREFIXES if p]} (its keys start with '
        f'{tops}). Pass a classification, detection or segmentation '
        f'checkpoint of OverLoCK.')


def _count(sd: Mapping[str, torch.Tensor], name: str) -> int:
    idx = {int(m.group(1)) for k in sd
           for m in [re.match(rf'{name}\.(\d+)\.', k)] if m}
    return max(idx) + 1 if idx else 0


def _ratio(hidden: int, dim: int) -> Union[int, float]:
    if hidden % dim == 0:
        return hidden // dim
    ratio = hidden / dim
    while int(dim * ratio) < hidden:  # float rounding below the hidden width
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def arch_from_state_dict(sd: Mapping[str, torch.Tensor]) -> Union[str, dict]:
    """The arch of an OverLoCK state_dict (without prefixes).

    Returns the official name (``'xt'``, ``'t'``, ``'s'``, ``'b'``) when the
    tensors match one, else the full arch dict. ``res_scale`` cannot be seen
    in the tensors; the official value (``True``) is assumed.

    Raises:
        CheckpointError: A tensor the arch is read from is missing.
    """
    try:
        dims = [int(sd['patch_embed1.9.weight'].shape[0])] + [
            int(sd[f'patch_embed{i}.0.weight'].shape[0]) for i in (2, 3, 4)]
        depths = [_count(sd, f'blocks{s}') for s in range(1, 5)]
        sub_depths = [_count(sd, f'sub_blocks{s}') for s in (3, 4)]
        kernels = [int(sd[f'blocks{s}.0.proj.1.lk_origin.weight'].shape[-1])
                   for s in range(1, 5)]
        mlp = [_ratio(int(sd[f'blocks{s}.0.proj.4.weight'].shape[0]),
                      dims[s - 1]) for s in range(1, 5)]
        heads = [int(sd[f'sub_blocks{s}.0.rpb1'].shape[0]) // 2
                 for s in (3, 4)]
        sub_mlp = [_ratio(int(sd[f'sub_blocks{s}.0.mlp.0.weight'].shape[0]),
                          dims[s - 1]) for s in (3, 4)]
        smk = (int(sd['sub_blocks3.0.rpb1'].shape[-1]) + 1) // 2
    except KeyError as e:
        raise CheckpointError(
            f'Cannot read the OverLoCK arch from the checkpoint: tensor '
            f'{e.args[0]!r} is missing. Give the arch explicitly.') from None
    ls = [1. if f'blocks{s}.0.ls.weight' in sd else None for s in range(1, 5)]
    for s in (3, 4):
        if f'sub_blocks{s}.0.ls1.weight' in sd:
            ls[s - 1] = 1.
    arch = dict(depths=depths, sub_depths=sub_depths, embed_dims=dims,
                kernel_sizes=kernels, mlp_ratios=mlp, sub_num_heads=heads,
                sub_mlp_ratios=sub_mlp, ls_init_values=ls,
                res_scale=ARCH_DEFAULTS['res_scale'], smk_size=smk)
    for name in ARCH_SETTINGS:
        if resolve_arch(name) == arch:
            return name
    return resolve_arch(arch)


def is_deploy(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether an OverLoCK state_dict is already re-parameterised."""
    return not any('.origin_bn.' in k for k in sd) and any(
        k.endswith('lk_origin.bias') for k in sd)


def model_kwargs(sd: Mapping[str, torch.Tensor],
                 arch: Union[str, dict, None] = None) -> Tuple[str, dict]:
    """``(kind, kwargs)``: the kind of model (``'classification'``,
    ``'detection'`` or ``'segmentation'``) and the :class:`OverLoCK`
    arguments that rebuild it from its state_dict ``sd`` (no prefix).

    Args:
        sd: The OverLoCK tensors (see :func:`find_backbone`).
        arch: Overrides the arch read from the tensors.
    """
    kwargs = dict(arch=arch if arch is not None else arch_from_state_dict(sd),
                  deploy=is_deploy(sd))
    if 'head.4.weight' in sd:
        kind = 'classification'
        kwargs.update(num_classes=int(sd['head.4.weight'].shape[0]),
                      projection=int(sd['head.4.weight'].shape[1]),
                      use_ds='aux_head.2.weight' in sd)
    elif 'h_proj.0.weight' in sd:
        kind = 'detection'
        kwargs.update(fuse_overview=True)
    else:
        kind = 'segmentation'
        kwargs.update(fuse_overview=False)
    return kind, kwargs


def build_from_state_dict(sd: Mapping[str, torch.Tensor],
                          arch: Union[str, dict, None] = None,
                          **overrides) -> Tuple[str, OverLoCK]:
    """``(kind, model)``: the model ``sd`` was saved from, loaded strictly,
    in eval mode. ``overrides`` replace constructor arguments."""
    kind, kwargs = model_kwargs(sd, arch)
    kwargs.update(overrides)
    model = OverLoCK(**kwargs)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(sd) & set(own)
                        if sd[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        arch_name = kwargs['arch'] if isinstance(kwargs['arch'], str) \
            else 'custom'
        raise CheckpointError(
            f'The checkpoint does not fit the {kind} model of arch '
            f'{arch_name!r} rebuilt from it: missing {missing[:4]}, '
            f'unexpected {unexpected[:4]}, shape mismatch {mismatched[:4]}. '
            f'Leave the arch out to read it from the checkpoint, or give '
            f'the right one.')
    model.load_state_dict(dict(sd), strict=True)
    return kind, model.eval()


def _outputs(model: OverLoCK, x: torch.Tensor) -> Sequence[torch.Tensor]:
    # the plain layers: the dilated branches of the original run one by one
    # (plain aten convolutions: a one-off check needs no per-shape tuning)
    with torch.no_grad(), options(fast_inference=False, cpu_conv='aten'):
        out = model(x)
    return out if isinstance(out, (tuple, list)) else (out, )


def reparameterize_checkpoint(checkpoint,
                              arch: Union[str, dict, None] = None,
                              shape: Tuple[int, int] = (224, 224),
                              tol: float = 1e-4,
                              seed: int = 0) -> Tuple[dict, dict]:
    """The deploy form of a loaded checkpoint, checked.

    The OverLoCK tensors are replaced by those of the re-parameterised model
    (:meth:`OverLoCK.reparameterize`); every other tensor (necks and heads of
    detectors and segmentors) and the ``meta`` entry are kept; optimizer and
    other training state are dropped (they refer to the old parameters).

    The outputs of the original model and of a ``deploy=True`` model loaded
    strictly from the result are compared on a random input (normal, seeded)
    of ``shape``: the largest difference must be at most
    ``tol * max(1, max|output|)``.

    Returns:
        ``(new_checkpoint, report)`` with report fields ``kind``, ``arch``,
        ``prefix``, ``max_diff``, ``max_abs``, ``tensors_before``,
        ``tensors_after``.

    Raises:
        CheckpointError: Not an OverLoCK checkpoint, already re-parameterised,
            or outputs changed by more than the tolerance.
    """
    container, state = weights_of(checkpoint)
    prefix, sd = find_backbone(state)
    if is_deploy(sd):
        raise CheckpointError(
            'The checkpoint is already re-parameterised (no dilated branches, '
            'large kernels with biases); load it with deploy=True.')
    kind, model = build_from_state_dict(sd, arch)
    deploy = copy.deepcopy(model).reparameterize()
    new_sd = deploy.state_dict()
    _, kwargs = model_kwargs(sd, arch)
    fresh = OverLoCK(**dict(kwargs, deploy=True)).eval()
    fresh.load_state_dict(new_sd, strict=True)

    x = torch.randn(1, model.in_channels, *shape,
                    generator=torch.Generator().manual_seed(seed))
    ref = _outputs(model, x)
    max_abs = max(r.abs().max().item() for r in ref)
    if not math.isfinite(max_abs):
        raise CheckpointError(
            'The original model gives non-finite outputs on a random input: '
            'the checkpoint holds invalid weights or BatchNorm statistics '
            '(running_var < 0, NaN); nothing to convert.')
    diffs = [(r - o).abs().max().item() for other in (deploy, fresh)
             for r, o in zip(ref, _outputs(other, x))]
    max_diff = max(diffs) if all(map(math.isfinite, diffs)) else math.nan
    limit = tol * max(1., max_abs)
    if not max_diff <= limit:
        raise CheckpointError(
            f'Re-parameterisation changed the outputs by {max_diff:.3g} '
            f'(allowed {limit:.3g}): the checkpoint may hold invalid '
            f'BatchNorm statistics (running_var <= 0 or NaN).')

    owned = {prefix + k for k in sd}
    out_sd = {k: v for k, v in state.items() if k not in owned}
    out_sd.update({prefix + k: v for k, v in new_sd.items()})
    if container is None:
        new_ckpt = out_sd
    else:
        new_ckpt = {container: out_sd}
        if isinstance(checkpoint.get('meta'), Mapping):
            new_ckpt['meta'] = dict(checkpoint['meta'])
        dropped = sorted(set(checkpoint) - {container, 'meta'})
        if dropped:
            logger.info('Dropped the checkpoint entries %s (training state '
                        'of the original parameters).', dropped)
    report = dict(kind=kind, arch=kwargs['arch'], prefix=prefix,
                  max_diff=max_diff, max_abs=max_abs,
                  tensors_before=len(state), tensors_after=len(out_sd))
    return new_ckpt, report
