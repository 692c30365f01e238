"""ContMix aggregation (NATTEN na2d_av semantics) and accelerator dispatch."""
import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import overlock
import overlock.ops as ops
from overlock.layers import LargeKernelDWConv2d
from overlock.ops import (accelerators, contmix_aggregate,
                          contmix_aggregate_reference, depthwise_conv2d,
                          neighborhood_bias_index,
                          neighborhood_starts)
from overlock.ops.cpu import is_channels_last
from overlock.ops.dwconv import _conv_forward, _DepthwiseConvCPU

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _loop_na2d_av(attn, value, k):
    """Pixel-by-pixel definition of na2d_av (dilation 1)."""
    b, g, h, w, c = value.shape
    out = torch.zeros_like(value)
    for i in range(h):
        si = min(max(i - k // 2, 0), h - k)
        for j in range(w):
            sj = min(max(j - k // 2, 0), w - k)
            win = value[:, :, si:si + k, sj:sj + k].reshape(b, g, k * k, c)
            out[:, :, i, j] = (attn[:, :, i, j, :, None] * win).sum(2)
    return out


def test_window_starts_shift_inside():
    assert neighborhood_starts(9, 5).tolist() == [0, 0, 0, 1, 2, 3, 4, 4, 4]
    assert neighborhood_starts(5, 5).tolist() == [0] * 5
    with pytest.raises(ValueError, match='at least as large'):
        neighborhood_starts(4, 5)


def test_bias_index_matches_natten_pb_start():
    k, size = 5, 9
    idx = neighborhood_bias_index(7, 8, k)
    assert idx.shape == (56, 25)

    def pb_start(i, n):
        half = k // 2
        return half + (half - i if i < half else 0) + \
            (n - i - 1 - half if i + half >= n else 0)

    for i in range(7):
        for j in range(8):
            row, col = pb_start(i, 7), pb_start(j, 8)
            want = [(row + a) * size + col + b for a in range(k)
                    for b in range(k)]
            assert idx[i * 8 + j].tolist() == want


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('k,h,w', [(3, 5, 7), (5, 5, 9), (7, 11, 8)])
def test_aggregate_matches_definition(device, k, h, w):
    torch.manual_seed(0)
    attn = torch.randn(2, 3, h, w, k * k, device=device).softmax(-1)
    value = torch.randn(2, 3, h, w, 4, device=device)
    want = _loop_na2d_av(attn, value, k)
    torch.testing.assert_close(
        contmix_aggregate(attn, value, k), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        contmix_aggregate_reference(attn, value, k), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_aggregate_gradients_match_reference(device):
    torch.manual_seed(1)
    a0 = torch.randn(1, 2, 9, 10, 25, device=device)
    v0 = torch.randn(1, 2, 9, 10, 6, device=device)
    grads = []
    for fn in (contmix_aggregate, contmix_aggregate_reference):
        a = a0.clone().requires_grad_(True)
        v = v0.clone().requires_grad_(True)
        out = fn(a, v, 5)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
         ).sum().backward()
        grads.append((out.detach(), a.grad, v.grad))
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_aggregate_gradcheck_float64(device):
    torch.manual_seed(2)
    a = torch.randn(1, 2, 6, 7, 9, dtype=torch.float64, device=device,
                    requires_grad=True)
    v = torch.randn(1, 2, 6, 7, 3, dtype=torch.float64, device=device,
                    requires_grad=True)
    with overlock.options(natten=False):
        assert torch.autograd.gradcheck(
            lambda a, v: torch.ops.overlock.contmix_aggregate(a, v, 3), (a, v))


def test_aggregate_rejects_bad_shapes():
    with pytest.raises(ValueError, match='expects attn'):
        contmix_aggregate(torch.zeros(2, 4, 4, 9), torch.zeros(2, 4, 4, 3), 3)
    with pytest.raises(ValueError, match='does not match'):
        contmix_aggregate(torch.zeros(1, 1, 4, 4, 8),
                          torch.zeros(1, 1, 4, 4, 3), 3)
    with pytest.raises(ValueError, match='at least 5 x 5'):
        contmix_aggregate(torch.zeros(1, 1, 4, 6, 25),
                          torch.zeros(1, 1, 4, 6, 3), 5)
    for k in (4, 0, 3.0):  # a centred window
        with pytest.raises(ValueError, match='positive odd int'):
            contmix_aggregate(torch.zeros(1, 1, 9, 9, 16),
                              torch.zeros(1, 1, 9, 9, 3), k)


def test_depthwise_conv2d_shapes():
    """Any stride-1 depthwise shape F.conv2d takes is computed, forward and
    backward (the CPU plans take odd "same" kernels, the rest goes to
    F.conv2d); a weight that is not depthwise for ``x`` is named."""
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    for shape, pad in (((4, 1, 4, 4), 2), ((4, 1, 3, 3), 0),
                       ((4, 1, 3, 5), 1), ((4, 1, 3, 3), 2)):
        w = torch.randn(shape, requires_grad=True)
        got = depthwise_conv2d(x, w, None, pad)
        grads = torch.autograd.grad(got.square().sum(), (x, w))
        want = F.conv2d(x, w, None, 1, pad, 1, 4)
        wants = torch.autograd.grad(want.square().sum(), (x, w))
        torch.testing.assert_close(got, want)
        for g, r in zip(grads, wants):
            torch.testing.assert_close(g, r)
    for shape in ((4, 3, 3), (4, 2, 3, 3), (5, 1, 3, 3)):
        with pytest.raises(ValueError, match=r'expects a weight \(C, 1, kH'):
            depthwise_conv2d(x, torch.randn(shape), None, 1)


@pytest.fixture
def fresh_accelerators(monkeypatch):
    monkeypatch.setattr(accelerators, '_natten_av', None)
    monkeypatch.setattr(accelerators, '_igemm', None)
    with overlock.options(natten=True, igemm=True):
        yield


def test_new_natten_without_na2d_av_is_skipped(monkeypatch, caplog,
                                               fresh_accelerators):
    fake = types.ModuleType('natten')
    fake.__version__ = '0.21.0'
    fake.functional = types.ModuleType('natten.functional')  # no na2d_av
    monkeypatch.setitem(sys.modules, 'natten', fake)
    monkeypatch.setitem(sys.modules, 'natten.functional', fake.functional)
    with caplog.at_level(logging.INFO, logger='overlock.ops.accelerators'):
        assert accelerators.natten_av() is None
        assert accelerators.natten_av() is None  # looked up once
    lines = [r for r in caplog.records if 'natten' in r.getMessage()]
    assert len(lines) == 1 and '0.21.0' in lines[0].getMessage()
    assert ops.accelerator_status()['natten'] is False


def test_natten_017_is_used_for_cuda_only(monkeypatch, fresh_accelerators):
    calls = []
    fake = types.ModuleType('natten')
    fake.__version__ = '0.17.5'
    fake.functional = types.ModuleType('natten.functional')

    def na2d_av(attn, value, kernel_size):
        calls.append(kernel_size)
        return contmix_aggregate_reference(attn, value, kernel_size)

    fake.functional.na2d_av = na2d_av
    monkeypatch.setitem(sys.modules, 'natten', fake)
    monkeypatch.setitem(sys.modules, 'natten.functional', fake.functional)
    assert accelerators.natten_av() is na2d_av
    # CPU tensors never go to natten
    contmix_aggregate(torch.rand(1, 1, 5, 5, 9), torch.rand(1, 1, 5, 5, 2), 3)
    assert calls == []
    status = ops.accelerator_status()
    assert (status['natten'], status['igemm']) == (True, False)
    assert status['triton'] is (accelerators.load_triton() is not None)
    ops.set_accelerators(natten=False)
    assert ops.accelerator_status()['natten'] is False


def test_large_kernel_conv_is_a_plain_conv_on_cpu(monkeypatch,
                                                  fresh_accelerators):
    conv = LargeKernelDWConv2d(8, 13, bias=True)
    assert set(conv.state_dict()) == {'weight', 'bias'}
    x = torch.randn(2, 8, 15, 17)
    want = F.conv2d(x, conv.weight, conv.bias, padding=6, groups=8)
    torch.testing.assert_close(conv(x), want)
    assert accelerators._igemm is None  # nothing imported for CPU tensors


@pytest.mark.parametrize('mode', ['auto', 'cf', 'cl', 'aten'])
@pytest.mark.parametrize('k,dilation', [(3, 1), (7, 2), (13, 1)])
def test_depthwise_conv_matches_conv2d(mode, k, dilation):
    torch.manual_seed(3)
    pad = dilation * (k - 1) // 2
    x0 = torch.randn(2, 6, 19, 23)
    w0 = torch.randn(6, 1, k, k)
    b0 = torch.randn(6)
    gy = torch.randn(2, 6, 19, 23)
    results = []
    with overlock.options(cpu_conv=mode):
        for fn in (ops.depthwise_conv2d,
                   lambda x, w, b, p, d: F.conv2d(x, w, b, 1, p, d, 6)):
            x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
            y = fn(x, w, b, pad, dilation)
            y.backward(gy)
            results.append((y.detach(), x.grad, w.grad, b.grad))
    for a, b in zip(*results):
        # relative to the tensor's scale: the weight gradient sums ~900
        # products in another order
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


@pytest.mark.parametrize('mode', ['cf', 'cl'])
def test_depthwise_conv_gradcheck_float64(mode):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with overlock.options(cpu_conv=mode):
        assert torch.autograd.gradcheck(
            lambda x, w, b: _DepthwiseConvCPU.apply(x, w, b, 4, 2),
            (x, w, b))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('autocast', [False, True])
def test_half_depthwise_conv_on_cpu_without_onednn_kernels(
        monkeypatch, dtype, autocast):
    """On a CPU without oneDNN half kernels, half-precision depthwise
    convolutions run the float32 path on the tensors' exact values (ATen
    would run them channel by channel): float32's numbers rounded to the
    half dtype, gradients in the inputs' dtypes, the half tensors (not
    float32 copies) kept for the backward; where oneDNN has the kernels,
    ATen's convolution."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from overlock.ops import dwconv

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(dwconv, 'has_half_kernels', lambda d: False)
    torch.manual_seed(6)
    x32 = torch.randn(2, 6, 13, 11).to(dtype).float()
    w32 = torch.randn(6, 1, 7, 7).to(dtype).float()
    b32 = torch.randn(6).to(dtype).float()
    gy = torch.randn(2, 6, 13, 11).to(dtype)
    if autocast:  # float32 leaves, cast by autocast as F.conv2d would be
        x, w, b = (t.clone().requires_grad_() for t in (x32, w32, b32))
    else:
        x, w, b = (t.to(dtype).requires_grad_() for t in (x32, w32, b32))
    kept = []
    with Ops() as seen, torch.autograd.graph.saved_tensors_hooks(
            lambda t: kept.append(t) or t, lambda t: t), \
            torch.autocast('cpu', dtype=dtype, enabled=autocast):
        y = ops.depthwise_conv2d(x, w, b, 6, 2)
    y.backward(gy)
    assert y.dtype == dtype
    assert not [n for n in seen.names if 'slow_conv2d' in n or 'thnn' in n]
    assert {t.dtype for t in kept if t.dim() == 4} == {dtype}
    ref = F.conv2d(x32.double(), w32.double(), b32.double(), 1, 6, 2, 6)
    # float32's result rounded once: within half a unit of the last place
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), ref, rtol=eps / 2, atol=1e-6)
    xr, wr, br = (t.double().requires_grad_() for t in (x32, w32, b32))
    F.conv2d(xr, wr, br, 1, 6, 2, 6).backward(gy.double())
    for got, want, leaf in ((x.grad, xr.grad, x), (w.grad, wr.grad, w),
                            (b.grad, br.grad, b)):
        assert got.dtype == leaf.dtype
        # float32 accumulation, rounded once to the half dtype (also under
        # autocast, whose casts' gradients pass through it)
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err.item() < eps
    # a CPU with the kernels: ATen's half convolution itself
    monkeypatch.setattr(dwconv, 'has_half_kernels', lambda d: True)
    with Ops() as seen, torch.no_grad():
        ops.depthwise_conv2d(x.detach().to(dtype), w.detach().to(dtype),
                             None, 6, 2)
    assert seen.names.count('convolution') == 1


def test_cpu_conv_mode_validation():
    with pytest.raises(ValueError, match=r"cpu_conv must be one of \('auto', 'cf', 'cl', 'aten'\)"):
        ops.set_cpu_conv_mode('fast')


@pytest.mark.parametrize('plan', [(False, False), (True, False), (False, True),
                                  (True, True)])
@pytest.mark.parametrize('channels_last_input', [False, True])
def test_depthwise_conv_plans_equal_conv2d(plan, channels_last_input):
    """Every way the auto-tuner may pick (layout x dilated/dense kernel)
    gives F.conv2d's numbers and keeps the input's layout."""
    torch.manual_seed(5)
    x = torch.randn(2, 6, 21, 18)
    if channels_last_input:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 1, 9, 9), torch.randn(6)
    y = _conv_forward(x, w, b, 8, 2, plan)
    torch.testing.assert_close(y, F.conv2d(x, w, b, 1, 8, 2, 6), rtol=1e-5,
                               atol=1e-5)
    assert is_channels_last(y) == channels_last_input


@pytest.mark.parametrize('h,w,k,g', [(7, 9, 5, 2), (13, 13, 13, 1),
                                     (6, 11, 3, 3)])
def test_neighborhood_bias_gradient_is_the_gather_gradient(h, w, k, g):
    """The relative-position bias: the gather's values, and its gradient
    through two one-hot matrix products equals the scatter-add's."""
    from overlock.ops import bias_index, neighborhood_bias
    gen = torch.Generator().manual_seed(k)
    table = torch.randn(g, 2 * k - 1, 2 * k - 1, generator=gen,
                        dtype=torch.float64, requires_grad=True)
    grad = torch.randn(g, h * w, k * k, generator=gen, dtype=torch.float64)
    want = table.flatten(1)[:, bias_index(h, w, k, table.device)]
    (want_grad, ) = torch.autograd.grad(want, table, grad)
    out = neighborhood_bias(table, h, w, k)
    (got_grad, ) = torch.autograd.grad(out, table, grad)
    assert torch.equal(out, want)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    # not the index path's backward
    assert out.grad_fn.name() != want.grad_fn.name()
