"""The toy classifier end to end on CPU: the toy crops, tools/train.py with
the real mmengine Runner, mmpretrain's Accuracy and our calibration metric,
tools/test.py --eval, and the checkpoint as the toy detector's backbone."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip('mmpretrain')

CFG = os.path.join(ROOT, 'configs', '_toy', 'overlock_toy_cls.py')
PY = sys.executable
#: fixed kernel choices: the per-shape timing of the 'auto' modes costs more
#: than these few iterations (same numbers either way)
FAST = dict(OVERLOCK_CPU_CONV='aten', OVERLOCK_CONTMIX='slices',
            PYTHONWARNINGS='ignore')


def _run(args, cwd):
    env = dict(os.environ, **FAST)
    proc = subprocess.run(args, cwd=cwd, env=env, timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy_cls')
    sys.path.insert(0, os.path.join(ROOT, 'tools', 'misc'))
    try:
        from make_toy_data import CLASSES, write_cls
    finally:
        sys.path.pop(0)
    counts = write_cls(str(root / 'data' / 'toy'), n_train=8, n_val=4,
                       size=(96, 96))
    return root, counts, CLASSES


def test_toy_crops_in_imagenet_layout(toy, tmp_path):
    root, counts, classes = toy
    cls = root / 'data' / 'toy' / 'cls'
    for split in ('train', 'val'):
        assert sorted(p.name for p in (cls / split).iterdir()) == \
            sorted(classes)
        for c in classes:
            files = sorted((cls / split / c).glob('*.png'))
            assert len(files) == counts[split][c]
    # shapes less than 60 % visible are left out
    assert counts == {'train': {'circle': 5, 'square': 7, 'triangle': 1},
                      'val': {'circle': 3, 'square': 2, 'triangle': 4}}
    from PIL import Image
    img = Image.open(next((cls / 'train').rglob('*.png')))
    assert img.size == (64, 64) and img.mode == 'RGB'
    # deterministic: the same seed writes the same files
    sys.path.insert(0, os.path.join(ROOT, 'tools', 'misc'))
    try:
        from make_toy_data import write_cls
    finally:
        sys.path.pop(0)
    again = write_cls(str(tmp_path), n_train=8, n_val=4, size=(96, 96))
    assert again == counts
    first = sorted((cls / 'train').rglob('*.png'))
    second = sorted((tmp_path / 'cls' / 'train').rglob('*.png'))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_train_test_and_detection_backbone(toy):
    root, counts, _ = toy
    work = root / 'work'
    out = _run([PY, os.path.join(ROOT, 'tools', 'train.py'), CFG,
                '--work-dir', str(work), '--cfg-options',
                'train_cfg.max_epochs=2', 'train_cfg.val_interval=2',
                'param_scheduler.1.end=2', 'train_dataloader.batch_size=8',
                'default_hooks.checkpoint.interval=2',
                'default_hooks.logger.interval=1'], cwd=root)
    n_train = sum(counts['train'].values())
    iters = 2 * -(-n_train // 8)
    assert f'Epoch(train) [2][{iters // 2}/{iters // 2}]' in out
    assert 'loss_aux' in out  # main + 0.4 * aux, logged apart
    assert 'Epoch(val) [2]' in out
    assert 'accuracy/top1' in out and 'calibration/ece' in out
    ckpt = (work / 'last_checkpoint').read_text().strip()
    assert ckpt.endswith('epoch_2.pth') and os.path.isfile(ckpt)

    out = _run([PY, os.path.join(ROOT, 'tools', 'test.py'), CFG, ckpt,
                '--eval', 'accuracy', 'ece', '--out',
                str(root / 'preds.pkl'), '--work-dir',
                str(work / 'test')], cwd=root)
    assert 'Loaded ' in out and 'missing 0' in out  # strict, ours
    line = [x for x in out.splitlines() if 'Epoch(test)' in x][-1]
    assert 'accuracy/top1' in line and 'calibration/ece' in line
    assert os.path.getsize(root / 'preds.pkl') > 0

    # upstream's classification -> detection rule: heads dropped, the
    # detection extras (extra_norm, h_proj) start fresh, the rest loads
    sys.path.insert(0, ROOT)
    import torch
    from mmengine.config import Config

    from overlock import load_checkpoint
    from overlock.checkpoint import safe_load
    from overlock_mm.runtime import build_model, mmengine_checkpoints
    det = build_model(Config.fromfile(os.path.join(
        ROOT, 'configs', '_toy', 'mask_rcnn_overlock_toy_coco.py')))
    with mmengine_checkpoints():
        report = load_checkpoint(det.backbone, ckpt)
        sd = safe_load(ckpt)['state_dict']
    assert report['dropped'] and all(
        k.startswith(('head.', 'aux_head.')) for k in report['dropped'])
    assert report['missing'] and all(
        k.startswith(('extra_norm.', 'h_proj.')) for k in report['missing'])
    assert not report['mismatched'] and not report['unexpected']
    torch.testing.assert_close(det.backbone.state_dict()['patch_embed1.0.weight'],
                               sd['patch_embed1.0.weight'])
