"""The GPU benchmarks run on CPU with tiny settings (smoke tests: what they
report is there; no speed is asserted)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PY = sys.executable
TOOLS = os.path.join(ROOT, 'tools', 'analysis')


def _run(args, timeout=600, env=None):
    proc = subprocess.run([PY] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS='ignore',
                                   **(env or {})))
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def test_backbone_benchmark_with_peers_and_profile(tmp_path):
    out = tmp_path / 'bench.json'
    text = _run([os.path.join(TOOLS, 'benchmark.py'), '--arch', 'xt',
                 '--size', '64', '64', '--mode', 'eval', '--compare', 'ours',
                 'convnext_t', 'swin_t', '--repeats', '1', '--warmup', '0',
                 '--profile', '3', '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [(r['impl'], r['mode'], r['dtype']) for r in rows] == [
        (impl, 'eval', 'fp32') for impl in ('ours', 'convnext_t', 'swin_t')]
    assert all(r['median_ms'] > 0 and r['device_name'] == 'CPU'
               for r in rows)
    assert text.count('profile: eval fp32') == 3
    assert 'Self CPU' in rows[0]['profile']


def test_backbone_benchmark_autocast_dtype():
    sys.path.insert(0, TOOLS)
    import benchmark
    res = benchmark.measure('resnet50', 'xt', 'detection', 'train', (64, 64),
                            1, 'cpu', 1, 0, 0, dtype='bf16', profile_top=2)
    assert res['dtype'] == 'bf16' and res['median_ms'] > 0
    # a CPU without oneDNN bf16 convolutions runs grouped ones channel by
    # channel: millions of profiler events for OverLoCK (GBs), so no profile
    if benchmark._cpu_has_kernels('bf16'):
        assert 'Self CPU' in res['profile']
    else:
        assert res['profile'].startswith('profile skipped: this CPU has no '
                                         'oneDNN bf16 convolutions')


@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
def test_backbone_benchmark_compile_modes(monkeypatch, mode):
    """``--compile MODE`` reaches ``torch.compile``; CUDA-graph modes mark
    every step as a new replay (inductor itself is too slow for a CPU
    test: the compiled numbers are checked in tests/test_compile.py)."""
    import torch
    sys.path.insert(0, TOOLS)
    import benchmark
    calls = dict(compile=[], steps=0)

    def fake_compile(model, mode=None):
        calls['compile'].append(mode)
        return model

    def mark():
        calls['steps'] += 1

    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin', mark)
    res = benchmark.measure('resnet50', 'xt', 'detection', 'train', (64, 64),
                            2, 'cpu', 2, 1, 0, compile=mode)
    assert calls['compile'] == [None if mode == 'default' else mode]
    assert calls['steps'] == (3 if mode == 'reduce-overhead' else 0)
    assert res['compiled'] == mode
    with pytest.raises(SystemExit):
        benchmark.main(['--compile', 'fastest'])


def test_detector_benchmark_runs_a_config(tmp_path):
    out = tmp_path / 'det.json'
    text = _run([os.path.join(TOOLS, 'benchmark_detector.py'), '--configs',
                 os.path.join(ROOT, 'configs', '_toy',
                              'mask_rcnn_overlock_toy_coco.py'),
                 '--size', '96', '64', '--batch', '1', '--iters', '1',
                 '--warmup', '0', '--mode', 'both', '--json', str(out)])
    data = json.loads(out.read_text())
    (res, ) = data['results']
    assert res['train']['median_s'] > 0 and res['eval']['median_s'] > 0
    assert data['size'] == [96, 64] and data['device'] == 'CPU'
    assert 'mask_rcnn_overlock_toy_coco.py' in text


def test_detector_benchmark_finds_mmdet_configs():
    pytest.importorskip('mmdet')
    sys.path.insert(0, TOOLS)
    import benchmark_detector
    path = benchmark_detector.resolve(benchmark_detector.DEFAULT_CONFIGS[1])
    assert os.path.isfile(path) and path.endswith(
        'mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')
    with pytest.raises(SystemExit, match='no such config'):
        benchmark_detector.resolve('mmdet::swin/none.py')


def test_count_ops_tool(tmp_path):
    """The launch-count proxy: ours and a peer, eval and train, the CUDA
    path emulated on CPU; the fused eval path under autocast counts fewer
    casts than it has convolutions."""
    out = tmp_path / 'ops.json'
    text = _run([os.path.join(TOOLS, 'count_ops.py'), '--arch', 'xt',
                 '--size', '64', '64', '--batch', '2', '--dtype', 'fp32',
                 'bf16', '--cuda-path', '--top', '3', '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [(r['mode'], r['dtype']) for r in rows] == [
        ('eval', 'fp32'), ('eval', 'bf16'), ('train', 'fp32'),
        ('train', 'bf16')]
    assert all(r['ops'] == sum(r['by_op'].values()) > 0 for r in rows)
    ev_bf16 = rows[1]['by_op']
    assert ev_bf16['aten._to_copy'] < ev_bf16['aten.convolution'] / 3
    assert rows[2]['by_op']['aten.convolution_backward'] > 0
    # activations kept for the backward: training rows only; bf16 less
    assert rows[0]['saved_mb'] == rows[1]['saved_mb'] == 0
    assert 0 < rows[3]['saved_mb'] < rows[2]['saved_mb']
    assert 'saved MB' in text
    assert 'the CUDA path' in text and 'ours, train bf16:' in text
    # the host's Python work: more in a training step than in eval
    assert 'py calls' in text
    assert 0 < rows[0]['python_calls'] < rows[2]['python_calls']


def test_count_ops_tool_fake_cuda(tmp_path):
    """``--device fake-cuda``: the CUDA dispatch on fake tensors, forward
    only, any size; CUDA autocast keeps less than float32."""
    pytest.importorskip('triton')
    out = tmp_path / 'ops.json'
    text = _run([os.path.join(TOOLS, 'count_ops.py'), '--arch', 'xt',
                 '--size', '256', '320', '--batch', '2', '--dtype', 'fp32',
                 'fp16', '--device', 'fake-cuda', '--json', str(out)])
    rows = json.loads(out.read_text())
    assert [(r['mode'], r['dtype']) for r in rows] == [
        ('eval', 'fp32'), ('eval', 'fp16'), ('train', 'fp32'),
        ('train', 'fp16')]
    train = rows[2]['by_op']
    # the forward only: no backward operation; the Triton ContMix op (two
    # per Focus-Net block: XT has 6 + 2)
    assert not [op for op in train if 'backward' in op]
    assert train['overlock.contmix_aggregate'] == 16
    assert train['aten.convolution'] > 100
    # what the training forward keeps for the backward, at 256x320
    assert 0 < rows[3]['saved_mb'] < rows[2]['saved_mb']
    assert 'training rows are the forward only' in text
    # fake tensors dispatch in Python: no Python-call count
    assert 'py calls' not in text
    assert all(r['python_calls'] is None for r in rows)


def test_depthwise_gpu_benchmark_shapes_and_table(tmp_path):
    """``bench_dwconv_gpu.py``: every depthwise convolution shape of the
    model (large kernels, dilated branches, 3x3) with its layer count, and
    the ATen / Triton table (on CPU through the interpreter: a smoke test,
    one shape)."""
    pytest.importorskip('triton')
    sys.path.insert(0, TOOLS)
    import torch

    import bench_dwconv_gpu
    from overlock.layers import DILATED_BRANCHES
    shapes = bench_dwconv_gpu.model_shapes('xt', (64, 64), 1,
                                           torch.device('cpu'))
    # stage 1 of XT: 16x16 maps of 56 channels, a 17x17 large kernel and
    # its dilated branches, one per Base-Net block (2)
    stage1 = {(k, d): n for (c, h, w, k, d), n in shapes.items()
              if (c, h, w) == (56, 16, 16)}
    assert stage1[(17, 1)] == 2
    assert set(DILATED_BRANCHES[17]) <= set(stage1)
    out = tmp_path / 'dw.json'
    text = _run([os.path.join(TOOLS, 'bench_dwconv_gpu.py'), '--arch', 'xt',
                 '--size', '32', '32', '--batch', '1', '--dtype', 'fp16',
                 '--device', 'cpu', '--repeats', '1', '--warmup', '0',
                 '--limit', '1', '--json', str(out)],
                env=dict(TRITON_INTERPRET='1'))
    res = json.loads(out.read_text())
    assert len(res['rows']) == 1
    row = res['rows'][0]
    assert row['dtype'] == 'fp16' and row['layers'] > 0
    assert all(row[impl][p] > 0 for impl in ('aten', 'triton')
               for p in ('fwd', 'dx', 'dw'))
    assert set(row['faster'].values()) <= {'aten', 'triton'}
    assert set(res['totals']['fp16']) == {'aten', 'triton', 'best'}
    assert 'interpreter' in text


def _bench_row(impl, mode, dtype, ms, mb, batch=2, size=(800, 1216),
               device='NVIDIA H100 80GB HBM3', compiled=None):
    return dict(impl=impl, mode=mode, dtype=dtype, median_ms=ms,
                peak_mem_mb=mb, batch=batch, size=list(size),
                device_name=device, compiled=compiled)


def test_targets_table_says_which_target_is_met(tmp_path):
    """``targets.py``: ratios to the peer of the same file, met only on a
    GPU run of the target's own setting; failures and bf16 runs listed as
    such; the detector pair found by config name."""
    sys.path.insert(0, TOOLS)
    import targets
    train = tmp_path / 'train.json'
    train.write_text(json.dumps([
        _bench_row('ours', 'train', 'fp16', 60.0, 3000.0),
        _bench_row('convnext_t', 'train', 'fp16', 32.0, 2500.0),
        _bench_row('ours', 'train', 'bf16', 50.0, 3000.0),
        _bench_row('convnext_t', 'train', 'bf16', 40.0, 2500.0),
        dict(impl='swin_t', mode='train', dtype='fp16',
             error='OutOfMemoryError: CUDA out of memory | more'),
    ]))
    evals = tmp_path / 'eval.json'
    evals.write_text(json.dumps([
        _bench_row('ours', 'eval', 'fp32', 30.0, 1, batch=1),
        _bench_row('convnext_t', 'eval', 'fp32', 7.5, 1, batch=1),
        _bench_row('ours', 'eval', 'fp16', 14.0, 1, batch=1, size=(512, 512)),
        _bench_row('convnext_t', 'eval', 'fp16', 7.0, 1, batch=1,
                   size=(512, 512)),
    ]))
    det = tmp_path / 'det.json'
    det.write_text(json.dumps(dict(
        device='NVIDIA H100 80GB HBM3', amp='fp16', size=[1333, 800],
        batch=2, compile_backbone='reduce-overhead', failed=[], results=[
            dict(config='/x/configs/mask_rcnn_overlock_t_fpn_1x_coco.py',
                 train=dict(median_s=0.36, min_s=0.35)),
            dict(config='mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
                 train=dict(median_s=0.30, min_s=0.29))])))
    md = tmp_path / 'summary.md'
    rows = targets.main([str(train), str(evals), str(det), '--markdown',
                         str(md)])
    got = {(r['target'], r['setting'].split(',')[0]): r for r in rows}
    step = got[('backbone train step, AMP fp16', 'train fp16')]
    assert step['ratio'] == pytest.approx(60 / 32)
    assert step['status'] == 'met (aim not reached)'
    assert got[('backbone train step, AMP fp16', 'train bf16')][
        'status'].startswith('other setting')
    mem = got[('peak training memory, AMP fp16', 'train fp16')]
    assert mem['ratio'] == pytest.approx(1.2) and mem['status'] == 'met'
    assert got[('backbone eval, fp32', 'eval fp32')]['status'] == 'not met'
    # eval fp16 measured at another size: listed, not judged
    assert got[('backbone eval, autocast fp16', 'eval fp16')][
        'status'].startswith('other setting')
    amp = got[('eval under autocast fp16 not slower than fp32', 'eval')]
    assert amp['ratio'] == pytest.approx(14 / 30) and amp['status'] == 'met'
    detector = got[('Mask R-CNN iteration vs Swin-T', 'train fp16')]
    assert detector['ratio'] == pytest.approx(1.2)
    assert detector['status'] == 'met (aim not reached)'
    assert 'reduce-overhead' in detector['setting']
    failed = [r for r in rows if r['target'].startswith('FAILED')]
    assert len(failed) == 1 and 'swin_t train fp16' in failed[0]['target']
    text = md.read_text()
    # one table row per result; a '|' inside an error message escaped
    assert text.count('\n') == len(rows) + 2
    assert 'OutOfMemoryError: CUDA out of memory / more' in text
    # CPU runs are never a target measurement
    cpu = tmp_path / 'cpu.json'
    cpu.write_text(json.dumps([
        _bench_row('ours', 'eval', 'fp32', 3.0, 1, batch=1, device='CPU'),
        _bench_row('convnext_t', 'eval', 'fp32', 7.5, 1, batch=1,
                   device='CPU')]))
    (row, ) = targets.main([str(cpu)])
    assert row['status'] == 'CPU run: not a target measurement'
    with pytest.raises(SystemExit, match='not a JSON file'):
        (tmp_path / 'bad.json').write_text('{')
        targets.main([str(tmp_path / 'bad.json')])
    with pytest.raises(SystemExit, match='no such file'):
        targets.main([str(tmp_path / 'none.json')])


def test_gpu_measure_script_stages_on_cpu(tmp_path):
    """``scripts/gpu_measure.sh``: the GPU session's stages run as written,
    here on CPU at tiny sizes (the variables the script reads): logs, the
    --json files and the summary table are written; an unknown stage is
    refused."""
    env = dict(os.environ, PYTHON=PY, DEVICE='cpu', ARCH='xt',
               TRAIN_SIZE='64 64', EVAL_SIZE='64 64', TRAIN_BATCH='1',
               REPEATS='1', WARMUP='0', HALF='bf16', TRAIN_DTYPES='fp32',
               DET_SIZE='96 64', DET_BATCH='1', DET_AMPS='fp32',
               DET_CONFIGS=os.path.join(ROOT, 'configs', '_toy',
                                        'mask_rcnn_overlock_toy_coco.py'),
               PYTHONWARNINGS='ignore')
    script = os.path.join(ROOT, 'scripts', 'gpu_measure.sh')
    out = tmp_path / 'results'
    proc = subprocess.run(['bash', script, str(out), 'eager', 'detector',
                           'summary'], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    for name in ('eager_train', 'eager_eval', 'detector_fp32'):
        assert (out / f'{name}.log').stat().st_size > 0
        assert json.loads((out / f'{name}.json').read_text())
    train = json.loads((out / 'eager_train.json').read_text())
    assert [r['impl'] for r in train] == [
        'ours', 'convnext_t', 'resnet50', 'swin_t']
    assert 'Self CPU' in train[0]['profile']
    steps = (out / 'steps.log').read_text()
    assert steps.count('rc 0') == 3 and 'summary' in steps
    summary = (out / 'summary.md').read_text()
    assert 'backbone eval, fp32' in summary
    assert 'CPU run: not a target measurement' in summary
    bad = subprocess.run(['bash', script, str(out), 'everything'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    assert bad.returncode == 2 and "unknown stage 'everything'" in bad.stdout


def test_backbone_benchmark_reports_a_failing_implementation(
        monkeypatch, tmp_path, capsys):
    """One implementation failing (an out-of-memory step, a compiler error)
    is logged and written as an error entry; the others are measured and
    the exit status says something failed."""
    sys.path.insert(0, TOOLS)
    import benchmark

    def fake_run_isolated(args, spec, mode, dtype):
        if spec == 'ours':
            raise RuntimeError('compiler says no')
        return dict(_bench_row(spec, mode, dtype, 5.0, 1.0, device='CPU'),
                    times_ms=[5.0], min_ms=5.0, runs=1)
    monkeypatch.setattr(benchmark, 'run_isolated', fake_run_isolated)
    out = tmp_path / 'b.json'
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(['--compare', 'ours', 'convnext_t', '--rounds', '2',
                        '--json', str(out)])
    assert exit_.value.code == 1
    rows = json.loads(out.read_text())
    assert rows[0]['impl'] == 'convnext_t' and rows[0]['runs'] == 2
    assert rows[1] == dict(impl='ours', mode='eval', dtype='fp32',
                           error='RuntimeError: compiler says no')
    assert 'FAILED eval fp32 ours: RuntimeError: compiler says no' in \
        capsys.readouterr().out
