"""Registration of the official OverLoCK models in timm.

``timm.create_model('overlock_t', pretrained=True)`` builds the ImageNet
classifier and loads the official release; ``features_only=True`` builds the
backbone (detection flavour) returning the four stage outputs, with
``feature_info``. ``overlock_*_reparam`` are the re-parameterised forms.
"""
from timm.models import (generate_default_cfgs, get_pretrained_cfg,
                          register_model)

from .checkpoint import RELEASE_URL, load_checkpoint
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
    # timm's create_model() plumbing that a plain nn.Module does not take
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir',
                'pretrained_strict', 'feature_cfg', 'scriptable',
                'exportable', 'no_jit', 'global_pool', 'drop_rate'):
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
    model.pretrained_cfg = get_pretrained_cfg(name).to_dict()
    model.default_cfg = model.pretrained_cfg
    if pretrained:
        load_checkpoint(model, model.pretrained_cfg['url'])
    return model


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
