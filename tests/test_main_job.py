"""The main job's pieces: the brief console, the per-image scores and the
typical-image choice of tools/analysis/draw_predictions.py, the summary of
tools/misc/summarize_run.py."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))
sys.path.insert(0, os.path.join(ROOT, 'tools', 'misc'))

import draw_predictions as dp  # noqa: E402
import summarize_run  # noqa: E402


# ------------------------------------------------------------- brief console
def _record(msg, level=logging.INFO):
    return logging.LogRecord('mmengine', level, __file__, 1, msg, None, None)


def test_brief_console_filter():
    from overlock_mm.console import BriefConsoleFilter
    f = BriefConsoleFilter()
    for noise in ('paramwise_options -- backbone.x.weight:lr=0.001',
                  'Config:\nmodel = dict(...)',
                  '\n' + '-' * 60 + '\nSystem environment:\n    sys.platform',
                  'Hooks will be executed in the following order:'):
        assert not f.filter(_record(noise)), noise
    for keep in ('Iter(train) [  50/1000]  lr: 1e-3  loss: 1.2',
                 'Saving checkpoint at 1000 iterations',
                 'Epoch(test) [50/50]    coco/bbox_mAP: 0.5',
                 'bbox_mAP_copypaste: 0.5 0.8'):
        assert f.filter(_record(keep)), keep
    # errors always reach the console, whatever they say
    assert f.filter(_record('paramwise_options broke', logging.ERROR))


def test_runner_class():
    from mmengine.runner import Runner

    from overlock_mm.console import BriefConsoleRunner, runner_class
    from overlock_mm.runner import OverLoCKRunner
    assert runner_class('full') is OverLoCKRunner
    assert issubclass(OverLoCKRunner, Runner)
    assert issubclass(runner_class('brief'), Runner)
    assert runner_class('brief') is BriefConsoleRunner
    with pytest.raises(ValueError, match='--console must be one of'):
        runner_class('quiet')


def test_brief_console_keeps_the_log_file(tmp_path):
    """Through the real runner logger: the console misses the config dump
    and the paramwise lines, the log file has them."""
    code = f'''
import torch
from overlock_mm.console import BriefConsoleRunner
runner = BriefConsoleRunner(model=torch.nn.Linear(1, 1),
                            work_dir={str(tmp_path)!r})
runner.logger.info('Config:\\nmodel = dict()')
runner.logger.info('paramwise_options -- a.weight:lr=0.1')
runner.logger.info('Iter(train) [1/1]  loss: 1.0')
print('LOG', runner.log_dir)
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert 'Iter(train) [1/1]' in out
    assert 'Config:' not in out and 'paramwise' not in out
    log_dir = out.split('LOG ')[1].strip()
    text = open(os.path.join(log_dir, os.path.basename(log_dir) + '.log')
                ).read()
    assert 'Config:' in text and 'paramwise_options' in text
    assert 'System environment' in text and 'System environment' not in out
    assert 'Iter(train) [1/1]' in text


# ------------------------------------------------------ scores, typical image
def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(dp.box_iou(a, b), [[1., 50 / 150, 0.]])
    assert dp.box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_detection_f1():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    gl = np.array([0, 1])
    # one right, one with the wrong class, one below the score threshold
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30]])
    labels = np.array([0, 2, 1])
    scores = np.array([0.9, 0.8, 0.3])
    assert dp.detection_f1(gt, gl, boxes, labels, scores, 0.5) == \
        pytest.approx(2 * 1 / (2 + 2))
    assert dp.detection_f1(gt, gl, boxes, labels, scores, 0.2) == \
        pytest.approx(2 * 2 / (2 + 3))
    # a box with IoU < 0.5 does not count; two boxes on one object: one
    shifted = np.array([[6, 0, 16, 10], [0, 0, 10, 10], [0, 0, 10, 11]])
    assert dp.detection_f1(gt, gl, shifted, [0, 0, 0], [.9, .8, .7]) == \
        pytest.approx(2 * 1 / (2 + 3))
    assert dp.detection_f1(np.zeros((0, 4)), [], np.zeros((0, 4)), [],
                           []) == 1.0


def test_segmentation_miou():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    # class 0: 3 / 4, class 1: 2 / 4, class 2: 0 / 1; the 255 pixel ignored
    assert dp.segmentation_miou(gt, pred) == pytest.approx(
        (3 / 4 + 2 / 4 + 0) / 3)


def test_typical_index_is_the_median():
    names = ['a', 'b', 'c', 'd', 'e']
    assert dp.typical_index(names, [0.9, 0.1, 0.5, 0.7, 0.3]) == 2
    # even count: the lower median; ties broken by name
    assert dp.typical_index(['a', 'b', 'c', 'd'], [0.4, 0.2, 0.4, 1.]) == 0
    with pytest.raises(ValueError):
        dp.typical_index([], [])


# ------------------------------------------------------------------ summary
def test_summary(tmp_path):
    run = tmp_path / 'test' / '20260101_000000'
    run.mkdir(parents=True)
    (run / '20260101_000000.json').write_text(json.dumps(
        {'coco/bbox_mAP': 0.61234, 'coco/bbox_mAP_50': 0.9,
         'coco/segm_mAP': 0.55, 'coco/segm_mAP_50': 0.88}) + '\n')
    (tmp_path / 'vis').mkdir()
    (tmp_path / 'vis' / 'quality.json').write_text(json.dumps(dict(
        metric='F1', typical='val_00007.png', typical_score=0.8,
        mean_score=0.75)))
    text = summarize_run.summary('det', str(tmp_path),
                                 str(tmp_path / 'iter_1200.pth'), 'pic.png',
                                 600, 700)
    assert 'bbox mAP     0.612' in text
    assert '1200 iterations in 600 s' in text
    assert 'val_00007.png, the median image by F1' in text
    with pytest.raises(FileNotFoundError, match='no test results'):
        summarize_run.summary('det', str(tmp_path / 'nothing'), 'x.pth',
                              'p.png', 1, 1)


# ------------------------------------------------- out_norm (from scratch)
def test_out_norm_group_keeps_the_parameters():
    import torch
    import torch.nn.functional as F

    from conftest import TINY_ARCH, randomize_
    from overlock import OverLoCK
    layer = randomize_(OverLoCK(arch=TINY_ARCH)).eval()
    group = OverLoCK(arch=TINY_ARCH, out_norm='group').eval()
    assert {k: v.shape for k, v in layer.state_dict().items()} == \
        {k: v.shape for k, v in group.state_dict().items()}
    group.load_state_dict(layer.state_dict(), strict=True)
    seen = {}
    group.extra_norm[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault('x', args[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = layer(x), group(x)
    n = group.extra_norm[0]
    # 'group' normalises over channels and positions together, 'layer' over
    # the channels of each position
    torch.testing.assert_close(
        b[0], F.group_norm(seen['x'], 1, n.weight, n.bias, 1e-6))
    torch.testing.assert_close(
        a[0], F.layer_norm(seen['x'].permute(0, 2, 3, 1), n.weight.shape,
                           n.weight, n.bias, 1e-6).permute(0, 3, 1, 2))
    assert [f.shape for f in a] == [f.shape for f in b]
    with pytest.raises(ValueError, match="out_norm must be one of"):
        OverLoCK(arch=TINY_ARCH, out_norm='batch')


def test_amp_options_dropped_without_cuda():
    """``--amp --cfg-options optim_wrapper.dtype=bfloat16`` on a CPU machine:
    AMP is switched off with a warning, and the AMP-only keys go with it
    (mmengine's plain OptimWrapper refuses ``dtype``)."""
    import torch
    from mmengine.config import Config

    from overlock_mm.runtime import prepare_runtime
    if torch.cuda.is_available():
        pytest.skip('only without CUDA')
    cfg = Config(dict(optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale='dynamic', dtype='bfloat16',
        optimizer=dict(type='AdamW', lr=1e-3))))
    prepare_runtime(cfg)
    assert cfg.optim_wrapper == dict(type='OptimWrapper',
                                     optimizer=dict(type='AdamW', lr=1e-3))
