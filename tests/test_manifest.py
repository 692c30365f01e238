"""Parameter names and shapes equal the official models' for every arch."""

import pytest
import torch

from conftest import load_manifest
from overlock import OverLoCK

ARCHS = ['xt', 't', 's', 'b']
HEADS = ('head.', 'aux_head.')
EXTRAS = ('extra_norm.', 'h_proj.')


@pytest.fixture(scope='module')
def manifest():
    return load_manifest()


def _shapes(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _build(**kwargs):
    with torch.device('meta'):
        return OverLoCK(**kwargs)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('form,kwargs', [
    ('classification', dict(num_classes=1000)),
    ('classification_deploy', dict(num_classes=1000, deploy=True)),
    ('detection', dict(fuse_overview=True)),
    ('segmentation', dict(fuse_overview=False)),
])
def test_state_dict_equals_manifest(manifest, arch, form, kwargs):
    model = _build(arch=arch, **kwargs)
    assert _shapes(model) == manifest[form][arch]


@pytest.mark.parametrize('arch', ARCHS)
def test_deploy_backbone_keys(manifest, arch):
    """A deploy backbone = deploy classifier keys - heads + det extras."""
    model = _build(arch=arch, deploy=True)
    want = {k: s for k, s in manifest['classification_deploy'][arch]
            if not k.startswith(HEADS)}
    want.update({k: s for k, s in manifest['detection'][arch]
                 if k.startswith(EXTRAS)})
    assert dict(_shapes(model)) == want


@pytest.mark.parametrize('arch,det,seg', [('xt', 15.66, 15.51),
                                          ('t', 33.13, 32.80),
                                          ('s', 56.45, 56.12),
                                          ('b', 96.09, 95.67)])
def test_parameter_counts(arch, det, seg):
    for fuse, want in ((True, det), (False, seg)):
        n = sum(p.numel() for p in _build(arch=arch,
                                          fuse_overview=fuse).parameters())
        assert round(n / 1e6, 2) == want
