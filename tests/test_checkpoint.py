"""The safe, reporting checkpoint loader."""
import argparse
import logging
import os

import pytest
import torch

from conftest import load_manifest
from overlock import OverLoCK, checkpoint_filter_fn, infer_arch, load_checkpoint
from overlock.checkpoint import CheckpointError, safe_load


@pytest.fixture(scope='module')
def manifest():
    return load_manifest()


def _synth(manifest, form, arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in manifest[form][arch]:
        if k.endswith('num_batches_tracked'):
            sd[k] = torch.tensor(7)
        elif k.endswith('running_var'):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


CONTAINERS = {
    'raw': lambda sd: sd,
    'state_dict': lambda sd: {'state_dict': sd, 'meta': {'epoch': 3}},
    'model+args': lambda sd: {
        'model': sd, 'epoch': 300,
        'args': argparse.Namespace(lr=1e-3, model='overlock_xt')},
    'module.': lambda sd: {'state_dict': {'module.' + k: v
                                          for k, v in sd.items()}},
    'detector': lambda sd: {'state_dict': {
        **{'backbone.' + k: v for k, v in sd.items()},
        'neck.lateral_convs.0.conv.weight': torch.zeros(256, 56, 1, 1)}},
}


@pytest.mark.parametrize('container', sorted(CONTAINERS))
@pytest.mark.parametrize('flavour', ['detection', 'segmentation'])
def test_imagenet_checkpoint_loads_into_backbones(manifest, tmp_path,
                                                  container, flavour, caplog):
    sd = _synth(manifest, 'classification', 'xt')
    path = tmp_path / 'ckpt.pth'
    torch.save(CONTAINERS[container](sd), path)
    model = OverLoCK('xt', fuse_overview=flavour == 'detection')
    with caplog.at_level(logging.INFO, logger='overlock.checkpoint'):
        report = load_checkpoint(model, str(path))
    extras = [k for k, _ in manifest[flavour]['xt']
              if k.startswith(('extra_norm.', 'h_proj.'))]
    assert sorted(report['missing']) == sorted(extras)
    assert report['mismatched'] == [] and report['unexpected'] == []
    assert sorted(report['dropped']) == sorted(
        k for k in sd if k.startswith(('head.', 'aux_head.')))
    assert report['loaded'] == len(manifest[flavour]['xt']) - len(extras)
    own = model.state_dict()
    assert torch.equal(own['blocks3.2.proj.1.lk_origin.weight'],
                       sd['blocks3.2.proj.1.lk_origin.weight'])
    assert any('Loaded' in r.getMessage() and 'missing' in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize('form', ['detection', 'segmentation'])
def test_official_downstream_checkpoints_load_strictly(manifest, form):
    sd = _synth(manifest, form, 'xt', seed=1)
    model = OverLoCK('xt', fuse_overview=form == 'detection')
    report = load_checkpoint(model, {'state_dict': {'backbone.' + k: v
                                                    for k, v in sd.items()}})
    assert report['missing'] == [] and report['loaded'] == len(sd)
    model.load_state_dict(sd, strict=True)


def test_whole_classifier_loads_strictly(manifest):
    sd = _synth(manifest, 'classification', 'xt')
    model = OverLoCK('xt', num_classes=1000)
    report = load_checkpoint(model, sd)
    assert report['missing'] == report['unexpected'] == report['dropped'] == []
    model.load_state_dict(sd, strict=True)


def test_reparam_checkpoint(manifest):
    sd = _synth(manifest, 'classification_deploy', 'xt')
    with pytest.raises(CheckpointError, match='deploy=True'):
        load_checkpoint(OverLoCK('xt'), sd)
    report = load_checkpoint(OverLoCK('xt', deploy=True), sd)
    assert report['mismatched'] == []


def test_wrong_arch_is_named(manifest):
    sd = _synth(manifest, 'classification', 't')
    assert infer_arch(sd) == 't'
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(OverLoCK('s'), sd)
    msg = str(e.value)
    assert 'OverLoCK-T but the model is OverLoCK-S' in msg
    assert "arch='t'" in msg and 'Shape mismatch' in msg


def test_missing_keys_are_an_error(manifest):
    sd = _synth(manifest, 'detection', 'xt')
    del sd['blocks1.0.dwconv.weight']
    del sd['extra_norm.0.weight']  # allowed
    with pytest.raises(CheckpointError, match=r'Missing 1 keys: '
                       r'blocks1\.0\.dwconv\.weight'):
        load_checkpoint(OverLoCK('xt'), sd)
    report = load_checkpoint(OverLoCK('xt'), sd, strict=False)
    assert 'blocks1.0.dwconv.weight' in report['missing']


def test_filter_fn_is_pure_and_idempotent(manifest):
    sd = _synth(manifest, 'classification', 'xt')
    wrapped = {'state_dict': {'module.backbone.' + k: v for k, v in sd.items()}}
    snapshot = dict(wrapped['state_dict'])
    model = OverLoCK('xt')
    once = checkpoint_filter_fn(wrapped, model)
    twice = checkpoint_filter_fn(once, model)
    assert once.keys() == twice.keys()
    assert not any(k.startswith(('head.', 'aux_head.', 'module.'))
                   for k in once)
    assert wrapped['state_dict'] == snapshot


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {_Evil.marker}', ))


def test_pickled_callable_is_refused_and_never_runs(manifest, tmp_path):
    _Evil.marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': _synth(manifest, 'classification', 'xt'),
                'payload': _Evil()}, path)
    with pytest.raises(CheckpointError, match='Refused to load') as e:
        load_checkpoint(OverLoCK('xt'), str(path))
    assert 'Nothing from it was executed' in str(e.value)
    assert not _Evil.marker.exists()


def test_numpy_metadata_is_allowed(tmp_path):
    np = pytest.importorskip('numpy')
    path = tmp_path / 'meta.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)},
                'meta': {'seed': np.int64(3), 'arr': np.arange(3),
                         'f': np.float64(0.5)}}, path)
    obj = safe_load(str(path))
    assert int(obj['meta']['seed']) == 3


def test_unreachable_url_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(OverLoCK('xt'),
                        'http://127.0.0.1:9/overlock_xt_in1k_224.pth')
    msg = str(e.value)
    assert 'Could not download' in msg
    assert os.path.join(str(tmp_path), 'hub', 'checkpoints',
                        'overlock_xt_in1k_224.pth') in msg
    assert e.value.__cause__ is None


def test_missing_file():
    with pytest.raises(CheckpointError, match='not found: /nonexistent.pth'):
        load_checkpoint(OverLoCK('xt'), '/nonexistent.pth')


def test_files_that_are_not_checkpoints_and_paths(tmp_path):
    """A text file, an empty file, a checkpoint of another network (even
    with ``strict=False``: nothing would load), and a filename that is not
    a path are named as such; a ``pathlib.Path`` is a path."""
    import torchvision
    from conftest import TINY_ARCH
    model = OverLoCK(TINY_ARCH)
    text, empty, other, ours = (tmp_path / n for n in (
        'notes.txt', 'empty.pth', 'resnet.pth', 'ours.pth'))
    text.write_text('hello\n')
    empty.write_bytes(b'')
    torch.save(torchvision.models.resnet18().state_dict(), other)
    torch.save(model.state_dict(), ours)
    with pytest.raises(CheckpointError, match='not a file written by '
                       'torch.save'):
        load_checkpoint(model, str(text))
    with pytest.raises(CheckpointError, match=r'empty \(0 bytes\)'):
        load_checkpoint(model, str(empty))
    with pytest.raises(CheckpointError, match="has none of the model's "
                       r'tensors: it holds 122 others \(bn1.bias'):
        load_checkpoint(model, str(other), strict=False)
    for bad in (None, 5):
        with pytest.raises(TypeError, match='takes a path, an http'):
            load_checkpoint(model, bad)
    assert load_checkpoint(model, ours)['loaded'] == len(model.state_dict())


def test_classifier_mismatches_are_explained():
    """A backbone's weights into a classifier, a classifier of another
    number of classes: the error says why and how (strict=False starts a
    fresh classifier, which then loads)."""
    from conftest import TINY_ARCH
    backbone = OverLoCK(TINY_ARCH).state_dict()
    ten = OverLoCK(TINY_ARCH, num_classes=10)
    with pytest.raises(CheckpointError, match='It has no classifier'):
        load_checkpoint(ten, backbone)
    thousand = OverLoCK(TINY_ARCH, num_classes=1000).state_dict()
    with pytest.raises(CheckpointError, match='another number of classes'):
        load_checkpoint(ten, thousand)
    report = load_checkpoint(ten, thousand, strict=False)
    assert report['mismatched'] and all(
        k.startswith(('head.', 'aux_head.')) for k in report['mismatched'])


def test_prefix_selects_and_a_wrong_prefix_is_named(tmp_path):
    from conftest import TINY_ARCH, randomize_
    src = randomize_(OverLoCK(TINY_ARCH))
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               src.state_dict().items()}}, path)
    model = OverLoCK(TINY_ARCH)
    report = load_checkpoint(model, str(path), prefix='backbone')
    assert report['loaded'] == len(src.state_dict())
    with pytest.raises(CheckpointError,
                       match=r"No key of the checkpoint starts with 'neck\.'"
                             r".*\['backbone'\]"):
        load_checkpoint(model, str(path), prefix='neck')
