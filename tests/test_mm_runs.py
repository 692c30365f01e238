"""End-to-end runs with the real mmengine Runner, mmdet/mmseg, pycocotools'
COCO evaluation and torch.distributed (gloo) on CPU processes."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

DET = os.path.join(ROOT, 'configs', '_toy', 'mask_rcnn_overlock_toy_coco.py')
SEG = os.path.join(ROOT, 'configs', '_toy', 'upernet_overlock_toy_ade.py')
PY = sys.executable


def _env(**extra):
    env = dict(os.environ)
    env['PYTHONWARNINGS'] = 'ignore'
    env['PATH'] = os.path.dirname(PY) + os.pathsep + env.get('PATH', '')
    env['PYTHON'] = PY
    env.pop('CUDA_VISIBLE_DEVICES', None)
    env.update(extra)
    return env


def _run(args, cwd, timeout=600, **env):
    proc = subprocess.run(args, cwd=cwd, env=_env(**env), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    _run([PY, os.path.join(ROOT, 'tools', 'misc', 'make_toy_data.py'),
          '--out', 'data/toy', '--train', '8', '--val', '4', '--size', '96',
          '96'], cwd=root)
    return root


def test_toy_data_layout(toy):
    import json
    coco = toy / 'data' / 'toy' / 'coco'
    ann = json.loads((coco / 'annotations' / 'instances_train.json')
                     .read_text())
    assert len(ann['images']) == 8 and ann['annotations']
    assert [c['name'] for c in ann['categories']] == [
        'circle', 'square', 'triangle']
    a = ann['annotations'][0]
    assert a['area'] > 0 and len(a['bbox']) == 4 and a['iscrowd'] == 0
    ade = toy / 'data' / 'toy' / 'ade'
    assert len(list((ade / 'images' / 'training').glob('*.jpg'))) == 8
    assert len(list((ade / 'annotations' / 'validation').glob('*.png'))) == 4
    # masks are exact: the polygon area equals the mask's pixel count
    from pycocotools import mask as mask_utils
    rle = a['segmentation']
    assert mask_utils.area(rle) == a['area']


def _ports():
    return str(random.randint(20000, 40000))


def _short(cfg_iters):
    return ['--cfg-options', f'train_cfg.max_iters={cfg_iters}',
            f'train_cfg.val_interval={cfg_iters}',
            f'default_hooks.checkpoint.interval={cfg_iters}',
            'default_hooks.logger.interval=1']


def test_det_train_then_test_with_coco_metric(toy):
    work = toy / 'work_det'
    _run([PY, os.path.join(ROOT, 'tools', 'train.py'), DET, '--work-dir',
          str(work), '--no-validate'] + _short(4), cwd=toy)
    ckpt = (work / 'last_checkpoint').read_text().strip()
    assert ckpt.endswith('iter_4.pth') and os.path.isfile(ckpt)
    out = _run([PY, os.path.join(ROOT, 'tools', 'test.py'), DET, ckpt,
                '--eval', 'bbox', 'segm', '--out', str(toy / 'det.pkl'),
                '--show-dir', str(toy / 'vis'), '--work-dir',
                str(work / 'test')], cwd=toy)
    assert 'Evaluate annotation type *bbox*' in out
    assert 'Evaluate annotation type *segm*' in out
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    assert os.path.getsize(toy / 'det.pkl') > 0
    assert len(list((toy / 'vis').rglob('*.png'))) == 4


def _losses(log):
    return [float(line.split(' loss: ')[1].split()[0])
            for line in log.splitlines() if 'Iter(train)' in line]


def test_det_train_with_compiled_backbone_equals_eager(toy):
    """``model.backbone.compile``: the backbone compiled in place
    (``aot_eager`` here, inductor on a GPU), the detector's heads eager;
    the same losses as eager training."""
    logs = []
    for extra in ([], ['model.backbone.compile.backend=aot_eager']):
        work = toy / f'work_compile{len(extra)}'
        logs.append(_run(
            [PY, os.path.join(ROOT, 'tools', 'train.py'), DET, '--work-dir',
             str(work), '--no-validate'] + _short(2) +
            ['randomness.seed=0'] + extra, cwd=toy))
    assert 'torch.compile' not in logs[0]
    assert "OverLoCK backbone: torch.compile(backend='aot_eager')" in logs[1]
    eager, compiled = _losses(logs[0]), _losses(logs[1])
    assert len(eager) == len(compiled) == 2
    assert compiled == pytest.approx(eager, rel=1e-3)


def test_unknown_eval_metric_is_a_clear_error(toy):
    proc = subprocess.run(
        [PY, os.path.join(ROOT, 'tools', 'test.py'), DET, 'missing.pth',
         '--eval', 'mAP'], cwd=toy, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Unknown --eval metric(s) ['mAP']" in proc.stdout
    assert 'valid: bbox segm proposal' in proc.stdout


def test_seg_train_then_test_with_iou_metric(toy):
    work = toy / 'work_seg'
    _run([PY, os.path.join(ROOT, 'tools', 'train.py'), SEG, '--work-dir',
          str(work), '--no-validate'] + _short(3), cwd=toy)
    ckpt = (work / 'last_checkpoint').read_text().strip()
    out = _run([PY, os.path.join(ROOT, 'tools', 'test.py'), SEG, ckpt,
                '--eval', 'mIoU', 'mDice', '--work-dir', str(work / 'test')],
               cwd=toy)
    assert 'mIoU' in out and 'mDice' in out
    assert 'circle' in out and 'triangle' in out  # per-class table


def test_dist_train_and_test_two_cpu_processes(toy):
    work = toy / 'work_dist'
    out = _run(['bash', os.path.join(ROOT, 'tools', 'dist_train.sh'), DET,
                '2', '--work-dir', str(work), '--no-validate'] + _short(2),
               cwd=toy, PORT=_ports())
    assert 'Distributed training: True' in out
    assert "'backend': 'gloo'" in out or '"backend": "gloo"' in out or \
        'gloo' in out
    ckpt = (work / 'last_checkpoint').read_text().strip()
    out = _run(['bash', os.path.join(ROOT, 'tools', 'dist_test.sh'), DET,
                ckpt, '2', '--eval', 'bbox', 'segm', '--work-dir',
                str(work / 'test')], cwd=toy, PORT=_ports())
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out


def _load_mm_ckpt(path):
    from overlock_mm.runtime import mmengine_checkpoints
    with mmengine_checkpoints():
        return torch.load(path, map_location='cpu', weights_only=True)


def test_kill_and_resume(toy):
    work = toy / 'work_resume'
    args = [PY, os.path.join(ROOT, 'tools', 'train.py'), DET, '--work-dir',
            str(work), '--no-validate', '--cfg-options',
            'train_cfg.max_iters=16', 'train_cfg.val_interval=16',
            'default_hooks.checkpoint.interval=4',
            'default_hooks.checkpoint.max_keep_ckpts=10',
            'default_hooks.logger.interval=1']
    proc = subprocess.Popen(args, cwd=toy, env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = work / 'last_checkpoint'
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and last.read_text().strip():
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last.exists(), 'no checkpoint was written before the kill'
    resumed_from = last.read_text().strip()
    done = int(resumed_from.rsplit('iter_', 1)[1].split('.')[0])
    assert done < 16, 'the run finished before it could be killed'

    out = _run(args + ['--resume'], cwd=toy)
    assert f'Load checkpoint from {resumed_from}' in out or \
        'resumed' in out.lower()
    assert f'resumed epoch: 0, iter: {done}' in out
    final = work / 'iter_16.pth'
    assert final.exists()
    ckpt = _load_mm_ckpt(str(final))
    assert ckpt['meta']['iter'] == 16
    steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
    # AdamW counted every iteration, the ones before the kill included:
    # its state came back from the checkpoint.
    assert steps == {16}
    # the message hub (with mmengine's HistoryBuffer) round-trips too
    assert 'message_hub' in ckpt


def test_mm2x_layout_checkpoint_evaluates(toy):
    """An mmdet 2.28-style checkpoint (same keys, 2.x container) evaluates,
    before and after tools/model_converters/mm2x_to_mm3x.py."""
    work = toy / 'work_det'
    src = work / 'iter_4.pth'
    if not src.exists():
        pytest.skip('needs test_det_train_then_test_with_coco_metric')
    sd = _load_mm_ckpt(str(src))['state_dict']
    for key in ('rpn_head.rpn_conv.weight', 'rpn_head.rpn_cls.weight',
                'rpn_head.rpn_reg.weight', 'roi_head.bbox_head.fc_cls.weight',
                'roi_head.bbox_head.fc_reg.weight',
                'roi_head.bbox_head.shared_fcs.0.weight',
                'roi_head.mask_head.convs.0.conv.weight',
                'roi_head.mask_head.upsample.weight',
                'roi_head.mask_head.conv_logits.weight',
                'neck.lateral_convs.0.conv.weight',
                'neck.fpn_convs.0.conv.weight',
                'backbone.sub_blocks3.0.rpb2'):
        assert key in sd  # the 2.x names
    legacy = toy / 'legacy_2x.pth'
    torch.save({'state_dict': sd, 'meta': {
        'mmdet_version': '2.28.2', 'mmcv_version': '1.7.2',
        'CLASSES': ('circle', 'square', 'triangle'), 'epoch': 12,
        'iter': 4, 'config': 'model = dict(...)'},
        'optimizer': {'state': {}, 'param_groups': [{'lr': 2e-4}]}}, legacy)
    out = _run([PY, os.path.join(ROOT, 'tools', 'test.py'), DET, str(legacy),
                '--eval', 'bbox', 'segm', '--work-dir', str(toy / 'legacy')],
               cwd=toy)
    assert 'coco/segm_mAP' in out
    conv = toy / 'converted.pth'
    _run([PY, os.path.join(ROOT, 'tools', 'model_converters',
                           'mm2x_to_mm3x.py'), str(legacy), str(conv)],
         cwd=toy)
    from overlock.checkpoint import safe_load
    new = safe_load(str(conv))
    assert new['meta']['dataset_meta']['classes'] == (
        'circle', 'square', 'triangle')
    assert 'optimizer' not in new and new['state_dict'].keys() == sd.keys()
    out = _run([PY, os.path.join(ROOT, 'tools', 'test.py'), DET, str(conv),
                '--eval', 'bbox', '--work-dir', str(toy / 'converted')],
               cwd=toy)
    assert 'coco/bbox_mAP' in out
