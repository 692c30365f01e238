"""The analysis tools run and write what they promise (no speed asserted)."""
import json
import os
import subprocess
import sys

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
