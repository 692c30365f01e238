"""tools/model_converters/reparameterize.py and overlock.convert: trained
classification, detection and segmentation checkpoints into the deploy form."""
import os
import sys

import pytest
import torch

from conftest import ROOT, TINY_ARCH, load_manifest, randomize_
from overlock import OverLoCK, load_checkpoint
from overlock.archs import resolve_arch
from overlock.checkpoint import CheckpointError
from overlock.convert import (arch_from_state_dict, find_backbone,
                              model_kwargs, reparameterize_checkpoint)

sys.path.insert(0, os.path.join(ROOT, 'tools', 'model_converters'))
import reparameterize  # noqa: E402

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def _eval(model):
    with torch.no_grad():
        out = model.eval()(X)
    return out if isinstance(out, tuple) else (out, )


def _trained(**kwargs):
    """A tiny model with random weights and BN statistics (as if trained)."""
    return randomize_(OverLoCK(TINY_ARCH, **kwargs), seed=3).eval()


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)


@pytest.mark.parametrize('form', ['classification', 'detection',
                                  'segmentation', 'classification_deploy'])
def test_arch_and_kind_of_every_official_checkpoint(form):
    kinds = dict(classification_deploy='classification')
    for arch, entries in load_manifest()[form].items():
        sd = {k: torch.empty(shape) for k, shape in entries}
        assert arch_from_state_dict(sd) == arch
        kind, kw = model_kwargs(sd)
        assert kind == kinds.get(form, form)
        assert kw['deploy'] == form.endswith('deploy')


def test_custom_arch_is_read_from_shapes():
    for kw in (dict(num_classes=7), dict(fuse_overview=False)):
        sd = OverLoCK(TINY_ARCH, **kw).state_dict()
        assert arch_from_state_dict(sd) == resolve_arch(TINY_ARCH)
    arch = dict(TINY_ARCH, mlp_ratios=[2, 2, 2.5, 3], sub_mlp_ratios=[3, 2.5])
    sd = OverLoCK(arch).state_dict()
    got = arch_from_state_dict(sd)
    assert OverLoCK(got).state_dict().keys() == sd.keys()
    assert all(v.shape == sd[k].shape
               for k, v in OverLoCK(got).state_dict().items())


def test_classification_checkpoint(tmp_path, capsys):
    model = _trained(num_classes=10)
    before = _eval(model)
    src, dst = tmp_path / 'cls.pth', tmp_path / 'cls_reparam.pth'
    extra = {'data_preprocessor.mean': torch.rand(3)}  # e.g. mmpretrain
    torch.save(dict(model.state_dict(), **extra), src)  # bare, as upstream
    reparameterize.main([str(src), str(dst), '--shape', '64', '64'])
    out = capsys.readouterr().out
    assert 'classification checkpoint, OverLoCK arch custom' in out
    assert 'max |difference|' in out
    sd = torch.load(dst, weights_only=True)
    assert torch.equal(sd.pop('data_preprocessor.mean'),
                       extra['data_preprocessor.mean'])
    assert not any('dil_' in k or 'origin_bn' in k for k in sd)
    deploy = OverLoCK(TINY_ARCH, num_classes=10, deploy=True)
    deploy.load_state_dict(sd, strict=True)
    _assert_same(_eval(deploy), before)
    assert list(sd) == list(deploy.state_dict())


def test_checkpoint_written_by_the_mm_runner(tmp_path, capsys):
    """What tools/train.py saves: ``state_dict`` + ``meta`` + mmengine's
    ``message_hub`` (HistoryBuffer objects, refused by plain safe loading)."""
    from mmengine.logging import HistoryBuffer
    model = _trained(num_classes=10)
    src, dst = tmp_path / 'epoch_6.pth', tmp_path / 'deploy.pth'
    hub = dict(log_scalars={'train/loss': HistoryBuffer([1.0, 0.5], [1, 1])})
    from overlock_mm.runtime import mmengine_checkpoints
    with mmengine_checkpoints():  # as tools/train.py saves
        torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=6),
                        message_hub=hub), src)
    with pytest.raises(Exception, match='HistoryBuffer'):
        torch.load(src, weights_only=True)
    reparameterize.main([str(src), str(dst), '--shape', '64', '64'])
    assert 'classification checkpoint' in capsys.readouterr().out
    with mmengine_checkpoints():
        out = torch.load(dst, weights_only=True)
    deploy = OverLoCK(TINY_ARCH, num_classes=10, deploy=True)
    deploy.load_state_dict(out['state_dict'], strict=True)


def test_timm_reparam_model_loads_the_result(tmp_path):
    import timm
    model = randomize_(OverLoCK('xt', num_classes=1000), seed=5).eval()
    new, report = reparameterize_checkpoint(
        {'model': model.state_dict(), 'epoch': 3}, shape=(32, 32))
    assert report['arch'] == 'xt' and report['kind'] == 'classification'
    assert set(new) == {'model'}  # training state dropped
    path = tmp_path / 'xt_reparam.pth'
    torch.save(new, path)
    net = timm.create_model('overlock_xt_reparam', pretrained=False)
    rep = load_checkpoint(net, str(path))
    assert rep['missing'] == [] and rep['unexpected'] == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model(x), rtol=0,
                                   atol=1e-4)


@pytest.mark.parametrize('kind,fuse', [('detection', True),
                                       ('segmentation', False)])
def test_whole_detector_and_segmentor(tmp_path, capsys, kind, fuse):
    model = _trained(fuse_overview=fuse)
    before = _eval(model)
    others = {'neck.lateral_convs.0.conv.weight': torch.randn(8, 16, 1, 1),
              'decode_head.conv_seg.bias': torch.randn(4)}
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state.update(others)
    ckpt = dict(state_dict=state, optimizer=dict(state={}),
                meta=dict(dataset_meta=dict(classes=('a', 'b')), epoch=12))
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save(ckpt, src)
    reparameterize.main([str(src), str(dst), '--shape', '64', '64'])
    assert f"{kind} checkpoint, OverLoCK arch custom, backbone prefix " \
           f"'backbone.'" in capsys.readouterr().out
    out = torch.load(dst, weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    assert out['meta'] == ckpt['meta']
    for k, v in others.items():
        assert torch.equal(out['state_dict'][k], v)
    prefix, sd = find_backbone(out['state_dict'])
    assert prefix == 'backbone.'
    assert set(out['state_dict']) == {f'backbone.{k}' for k in sd} | set(
        others)
    deploy = OverLoCK(TINY_ARCH, fuse_overview=fuse, deploy=True)
    deploy.load_state_dict(sd, strict=True)
    _assert_same(_eval(deploy), before)
    # the package loader (mm configs' init_cfg) reads it strictly too
    again = OverLoCK(TINY_ARCH, fuse_overview=fuse, deploy=True)
    rep = load_checkpoint(again, str(dst), prefix='backbone')
    assert rep['missing'] == [] and rep['mismatched'] == []
    _assert_same(_eval(again), before)


def test_errors_are_clear(tmp_path):
    not_overlock = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}}, not_overlock)
    with pytest.raises(SystemExit, match='Not an OverLoCK checkpoint'):
        reparameterize.main([str(not_overlock), str(tmp_path / 'o.pth')])
    deploy = tmp_path / 'deploy.pth'
    torch.save(OverLoCK(TINY_ARCH, deploy=True).state_dict(), deploy)
    with pytest.raises(SystemExit, match='already re-parameterised'):
        reparameterize.main([str(deploy), str(tmp_path / 'o.pth')])
    src = tmp_path / 'tiny.pth'
    torch.save(OverLoCK(TINY_ARCH).state_dict(), src)
    with pytest.raises(SystemExit, match='does not fit'):
        reparameterize.main([str(src), str(tmp_path / 'o.pth'),
                             '--arch', 'xt'])
    with pytest.raises(SystemExit, match='Unknown OverLoCK arch'):
        reparameterize.main([str(src), str(tmp_path / 'o.pth'),
                             '--arch', 'huge'])
    with pytest.raises(SystemExit, match='must differ'):
        reparameterize.main([str(src), str(src)])
    assert not (tmp_path / 'o.pth').exists()


def test_invalid_statistics_are_refused():
    sd = _trained(fuse_overview=False).state_dict()
    key = next(k for k in sd if k.endswith('origin_bn.running_var'))
    sd[key] = -sd[key]  # sqrt of a negative variance
    with pytest.raises(CheckpointError, match='non-finite outputs'):
        reparameterize_checkpoint(sd, shape=(64, 64))


def test_changed_outputs_are_refused(monkeypatch):
    sd = _trained(fuse_overview=False).state_dict()
    real = OverLoCK.reparameterize

    def broken(self):
        real(self)
        with torch.no_grad():
            next(m for n, m in self.named_modules()
                 if n.endswith('lk_origin')).bias.add_(1.)
        return self

    monkeypatch.setattr(OverLoCK, 'reparameterize', broken)
    with pytest.raises(CheckpointError, match='changed the outputs by'):
        reparameterize_checkpoint(sd, shape=(64, 64))
