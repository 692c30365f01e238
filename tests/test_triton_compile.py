"""The Triton kernels through Triton's real GPU compiler (PTX and cubin for
sm_90, no GPU needed: ``tools/analysis/triton_compile.py``), for every kernel
variant one training step of OverLoCK-XT launches in float32, float16 and
bfloat16; and the model's dispatch: with the Triton kernels selected, every
depthwise convolution and ContMix aggregation of the step reaches them
(the large kernels used to get a LayerNorm's channels-last view and fall
back to cuDNN's channels-last kernels)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import overlock
from overlock.archs import resolve_arch
from overlock.layers import LayerNorm2d

pytest.importorskip('triton')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'analysis', 'triton_compile.py')
DTYPES = ('fp32', 'fp16', 'bf16')
CONTMIX = {'forward_kernel', 'grad_attn_kernel', 'grad_value_kernel'}
#: float32 depthwise convolutions take the direct kernels, float16 and
#: bfloat16 the tensor-core ones
KERNELS = {'fp32': CONTMIX | {'conv_kernel', 'weight_grad_kernel'},
           'fp16': CONTMIX | {'conv_dot_kernel', 'weight_grad_dot_kernel'},
           'bf16': CONTMIX | {'conv_dot_kernel', 'weight_grad_dot_kernel'}}


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
    """The tool's table for OverLoCK-XT at 64x64, compiled for sm_90 (in a
    subprocess: it needs the interpreter off, this process has it on)."""
    out = tmp_path_factory.mktemp('triton_compile') / 'variants.json'
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run(
        [sys.executable, TOOL, '--arch', 'xt', '--size', '64', '64', '--cc',
         '90', '--json', str(out)], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_launched_variant_compiles_for_sm90_without_spills(compiled):
    rows = compiled['rows']
    assert compiled['failures'] == []
    assert {r['dtype'] for r in rows} == set(DTYPES)
    for dtype in DTYPES:
        assert {r['kernel'] for r in rows if r['dtype'] == dtype} == \
            KERNELS[dtype]
    assert all(r['cc'] == 90 for r in rows)
    assert all(r['local'] == 0 and r['stack'] == 0 for r in rows), [
        r['variant'] for r in rows if r['local'] or r['stack']]
    assert 0 < max(r['regs'] for r in rows) <= 255


def _depthwise(model):
    """``{(kernel size, dilation)}`` of the model's depthwise convolutions."""
    return {(m.kernel_size[0], m.dilation[0]) for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels}


def test_training_step_sends_every_depthwise_conv_to_triton(compiled):
    model = overlock.OverLoCK('xt')
    want = _depthwise(model)
    assert (17, 1) in want and (3, 7) in want  # large kernel, dilated branch
    cfg = resolve_arch('xt')
    contmix_sizes = {cfg['smk_size'], *cfg['kernel_sizes'][2:]}
    for dtype in DTYPES:
        rows = [r for r in compiled['rows'] if r['dtype'] == dtype]

        def taps(kernel, **match):
            return {(r['constexprs']['K'], r['constexprs'].get('DIL'))
                    for r in rows if r['kernel'] == kernel and all(
                        r['constexprs'][k] == v for k, v in match.items())}

        dot = '' if dtype == 'fp32' else '_dot'
        assert taps(f'conv{dot}_kernel', FLIP=False) == want, dtype  # fwd
        assert taps(f'conv{dot}_kernel', FLIP=True) == want, dtype  # grad x
        assert taps(f'weight_grad{dot}_kernel') == want, dtype
        for kernel in ('forward_kernel', 'grad_attn_kernel',
                       'grad_value_kernel'):
            assert {k for k, _ in taps(kernel)} == contmix_sizes, kernel


def test_layer_norm_output_layout():
    """A channels-last view on CPU (the CPU plans time both layouts); NCHW
    anywhere else, where it would send cuDNN to its channels-last depthwise
    kernels (checked on the meta device: no GPU here)."""
    norm = LayerNorm2d(8)
    x = torch.randn(2, 8, 5, 6)
    out = norm(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    ref = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8, ), norm.weight,
                                   norm.bias, norm.eps).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    meta = LayerNorm2d(8).to('meta')(x.to('meta'))
    assert meta.shape == x.shape and meta.is_contiguous()
