"""The analysis tools run and write what they promise (no speed asserted)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

PY = sys.executable


def test_benchmark_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [PY, os.path.join(ROOT, 'tools', 'analysis', 'benchmark.py'),
         '--arch', 'xt', '--size', '64', '96', '--mode', 'both',
         '--compare', 'naive', 'ours', 'deploy', '--repeats', '1',
         '--warmup', '0', '--json', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout
    rows = json.loads(out.read_text())
    assert {(r['mode'], r['impl']) for r in rows} == {
        ('eval', 'naive'), ('eval', 'ours'), ('eval', 'deploy'),
        ('train', 'naive'), ('train', 'ours')}
    assert all(r['median_ms'] > 0 for r in rows)
    assert 'speed-up' in proc.stdout


def test_flops_count_contmix():
    sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))
    import get_flops

    from overlock import OverLoCK
    model = OverLoCK('xt').eval()
    x = torch.randn(1, 3, 64, 64)
    gmacs, contmix = get_flops.count(model, lambda m: m(x))
    assert gmacs > 0 and contmix > 0
    # at 64x64 stage 3 (4x4) runs ContMix at 13x13 after the upsampling:
    # per block 2 halves x (C/2) channels x 169 pixels x (25 or 169) taps
    per_block3 = 128 * 13 * 13 * (25 + 169)
    assert contmix * 1e9 >= 6 * per_block3


def _collect_env():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'collect_env', os.path.join(ROOT, 'tools', 'misc', 'collect_env.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_env_checks_kernels_and_backbone(tmp_path):
    """``tools/misc/collect_env.py --check``: the environment, then the
    ContMix and depthwise kernels and a backbone step against float64, all
    within their limits here (exit 0), written to ``--json``."""
    out = tmp_path / 'env.json'
    proc = subprocess.run(
        [PY, os.path.join(ROOT, 'tools', 'misc', 'collect_env.py'),
         '--check', '--dtype', 'fp32', '--device', 'cpu', '--json', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout
    result = json.loads(out.read_text())
    env = result['environment']
    assert env['PyTorch'] == torch.__version__
    assert env['ContMix on cpu'].startswith('PyTorch')
    assert 'PyTorch compiling details' not in env
    checks = result['checks']
    assert len(checks) == 7 and all(c['ok'] for c in checks)
    assert {c['what'].split()[0] for c in checks} == {
        'ContMix', 'depthwise', 'backbone'}
    assert 'FAIL' not in proc.stdout and '7 of 7 checks' in proc.stdout


def test_collect_env_reports_a_wrong_kernel(monkeypatch, capsys):
    """A depthwise convolution off by 1e-3 of its output: the rows that
    read it fail, the tool says which and returns 1; so does one that
    raises (e.g. a Triton compiler error), and the other checks still
    run."""
    tool = _collect_env()
    right = tool.depthwise_conv2d
    monkeypatch.setattr(tool, 'depthwise_conv2d',
                        lambda x, *a: right(x, *a) * (1 + 1e-3))
    assert tool.main(['--check', '--kernels-only', '--dtype', 'fp32',
                      '--device', 'cpu']) == 1
    text = capsys.readouterr().out
    assert text.count('FAIL') == 3  # two cases, and the summary
    assert 'FAILED depthwise 17x17 dil 1, 40x36 fp32; depthwise 7x7' in text

    def broken(*args):
        raise RuntimeError('PassManager::run failed')
    monkeypatch.setattr(tool, 'depthwise_conv2d', broken)
    assert tool.main(['--check', '--kernels-only', '--dtype', 'fp32',
                      '--device', 'cpu']) == 1  # a check that raises
    text = capsys.readouterr().out
    assert 'depthwise: RuntimeError: PassManager::run failed' in text
    assert text.count('  OK') == 2  # the ContMix rows still ran
    monkeypatch.setattr(tool, 'depthwise_conv2d', right)
    assert tool.main(['--kernels-only', '--check', '--dtype', 'fp32',
                      '--device', 'cpu']) == 0
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match='no CUDA device'):
            tool.main(['--device', 'cuda'])


def _tool(*parts):
    import importlib.util
    path = os.path.join(ROOT, 'tools', *parts)
    spec = importlib.util.spec_from_file_location(parts[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converters_refuse_bad_arguments_before_writing(tmp_path):
    """The checkpoint converters name the problem, and write nothing: the
    input as output, an output folder that does not exist, a file that is
    no checkpoint, a backbone alone given to mm2x_to_mm3x, a negative
    tolerance."""
    from conftest import TINY_ARCH

    from overlock import OverLoCK
    mm2x = _tool('model_converters', 'mm2x_to_mm3x.py')
    reparam = _tool('model_converters', 'reparameterize.py')
    backbone = tmp_path / 'backbone.pth'
    torch.save({'state_dict': OverLoCK(TINY_ARCH).state_dict()}, backbone)
    text = tmp_path / 'notes.txt'
    text.write_text('hello\n')
    out = tmp_path / 'out.pth'
    cases = [
        (mm2x, [str(backbone), str(backbone)], 'OUT must differ from IN'),
        (mm2x, [str(backbone), str(tmp_path / 'no' / 'out.pth')],
         'no folder .*no for OUT'),
        (mm2x, [str(text), str(out)], 'not a file written by torch.save'),
        (mm2x, [str(backbone), str(out)], 'has no backbone.. tensors'),
        (reparam, [str(backbone), str(tmp_path / 'no' / 'out.pth')],
         'no folder'),
        (reparam, [str(backbone), str(out), '--tol', '-1'],
         '--tol must be positive'),
    ]
    for tool, argv, match in cases:
        with pytest.raises(SystemExit, match=match):
            tool.main(argv)
        assert not out.exists()


def test_train_and_test_tools_name_a_missing_config(tmp_path):
    train = _tool('train.py')
    test = _tool('test.py')
    missing = str(tmp_path / 'no_such_config.py')
    with pytest.raises(FileNotFoundError, match='config not found: .*'
                       'no_such_config.py'):
        train.load_config(train.parse_args([missing]))
    with pytest.raises(FileNotFoundError, match='config not found'):
        test.main([missing, str(tmp_path / 'ckpt.pth')])
