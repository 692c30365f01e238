"""Registration of the official OverLoCK models in timm.

``timm.create_model('overlock_t', pretrained=True)`` builds the ImageNet
classifier and loads the official release; ``features_only=True`` builds the
backbone (detection flavour) returning the four stage outputs, with
``feature_info``. ``overlock_*_reparam`` are the re-parameterised forms.
"""
from timm.models import (generate_default_cfgs, get_pretrained_cfg,
                          register_model)

from .checkpoint import RELEASE_URL, CheckpointError, load_checkpoint
from .model import OverLoCK

__all__ = ['default_cfgs']


def _cfg(url: str, **kwargs) -> dict:
    return dict(
        url=url,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.9,
        interpolation='bicubic',
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv='patch_embed1.0',
        classifier='head.4',
        license='apache-2.0',
        paper_ids='arXiv:2502.20087',
        **kwargs)


default_cfgs = generate_default_cfgs({
    f'overlock_{arch}{suffix}.in1k':
    _cfg(f'{RELEASE_URL}overlock_{arch}_in1k_224{suffix}.pth')
    for arch in ('xt', 't', 's', 'b') for suffix in ('', '_reparam')
})


def _create(arch: str, deploy: bool, pretrained: bool = False, **kwargs):
    overlay = kwargs.pop('pretrained_cfg_overlay', None) or {}
    # timm's create_model() plumbing that a plain nn.Module does not take
    for key in ('pretrained_cfg', 'cache_dir', 'pretrained_strict',
                'feature_cfg', 'scriptable', 'exportable', 'no_jit',
                'global_pool', 'drop_rate'):
        kwargs.pop(key, None)
    features_only = kwargs.pop('features_only', False)
    in_chans = kwargs.pop('in_chans', 3)
    if features_only:
        kwargs['num_classes'] = 0
        kwargs.setdefault('out_indices', (0, 1, 2, 3))
    else:
        kwargs.setdefault('num_classes', 1000)
    model = OverLoCK(arch=arch, in_channels=in_chans, deploy=deploy, **kwargs)
    name = f'overlock_{arch}{"_reparam" if deploy else ""}'
    model.pretrained_cfg = dict(get_pretrained_cfg(name).to_dict(),
                                **overlay)
    model.default_cfg = model.pretrained_cfg
    if pretrained:
        _load_pretrained(model, in_chans)
    return model


def _load_pretrained(model: OverLoCK, in_chans: int) -> None:
    """The release weights, or ``pretrained_cfg_overlay``'s ``file`` / ``url``
    (e.g. a local copy on a machine without network). As in timm, another
    ``num_classes`` gets a freshly initialised classifier; the stem takes
    the release's 3 input channels only."""
    cfg = model.pretrained_cfg
    source = cfg.get('file') or cfg.get('url')
    if in_chans != 3:
        raise ValueError(f'pretrained=True: the released weights take 3 input '
                         f'channels, not in_chans={in_chans}; build with '
                         f'in_chans=3, or without pretrained weights')
    classes = getattr(model, 'num_classes', 0)
    if classes in (0, cfg.get('num_classes', 1000)):
        load_checkpoint(model, source)
        return
    report = load_checkpoint(model, source, strict=False)
    if set(report['missing']) - {k for k in model.state_dict()
                                 if k.startswith(('head.', 'aux_head.'))} \
            or any(not k.startswith(('head.', 'aux_head.'))
                   for k in report['mismatched']):
        raise CheckpointError(
            f'{source} does not fit overlock with num_classes={classes} '
            f'beyond its classifier: missing {report["missing"][:4]}, shape '
            f'mismatch {report["mismatched"][:4]}')


@register_model
def overlock_xt(pretrained=False, **kwargs):
    return _create('xt', False, pretrained, **kwargs)


@register_model
def overlock_t(pretrained=False, **kwargs):
    return _create('t', False, pretrained, **kwargs)


@register_model
def overlock_s(pretrained=False, **kwargs):
    return _create('s', False, pretrained, **kwargs)


@register_model
def overlock_b(pretrained=False, **kwargs):
    return _create('b', False, pretrained, **kwargs)


@register_model
def overlock_xt_reparam(pretrained=False, **kwargs):
    return _create('xt', True, pretrained, **kwargs)


@register_model
def overlock_t_reparam(pretrained=False, **kwargs):
    return _create('t', True, pretrained, **kwargs)


@register_model
def overlock_s_reparam(pretrained=False, **kwargs):
    return _create('s', True, pretrained, **kwargs)


@register_model
def overlock_b_reparam(pretrained=False, **kwargs):
    return _create('b', True, pretrained, **kwargs)
