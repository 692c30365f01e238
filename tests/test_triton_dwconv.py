"""The Triton depthwise convolution (forward, input and weight gradients)
against ``F.conv2d`` in float64, float32 / float16 / bfloat16, through the
model's dispatch point with ``kernels='triton'``. Without a GPU the kernels
run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py):
the same code as on the GPU."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import overlock
from overlock.layers import DILATED_BRANCHES, DilatedReparamBlock
from overlock.ops import depthwise_conv2d

pytest.importorskip('triton')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
#: relative to the reference's largest value
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def _case(n, c, h, w, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, 1, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64)
    go = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    return x, weight, bias, go


def _reference(x, weight, bias, go, dilation):
    x, weight, bias = (t.clone().requires_grad_() for t in (x, weight, bias))
    pad = dilation * (weight.shape[-1] - 1) // 2
    out = F.conv2d(x, weight, bias, 1, pad, dilation, x.shape[1])
    out.backward(go)
    return out.detach(), x.grad, weight.grad, bias.grad


def _run(x, weight, bias, go, dilation, dtype):
    x, weight, bias = (t.to(DEVICE, dtype).requires_grad_()
                       for t in (x, weight, bias))
    pad = dilation * (weight.shape[-1] - 1) // 2
    with overlock.options(kernels='triton'), FlopCounterMode(
            display=False) as counter:
        out = depthwise_conv2d(x, weight, bias, pad, dilation)
        out.backward(go.to(DEVICE, dtype))
    ops = counter.get_flop_counts()['Global']
    assert torch.ops.overlock.depthwise_conv2d in ops  # the Triton path ran
    assert torch.ops.overlock.depthwise_conv2d_backward in ops
    return out.detach(), x.grad, weight.grad, bias.grad


def _rel(a, b):
    return ((a.double().cpu() - b).abs().max() / b.abs().max()).item()


#: (N, C, H, W, K, dilation): odd maps and channels, the dilated re-param
#: branches' (K, dilation) pairs, a map narrower than the kernel's reach
SHAPES = [
    (2, 3, 7, 9, 3, 1),
    (1, 2, 9, 8, 5, 1),
    (1, 3, 11, 10, 7, 2),
    (2, 1, 13, 12, 3, 5),
    (1, 2, 6, 11, 5, 1),   # H < reach of dilation 2 below: heavy masking
    (1, 2, 5, 7, 3, 3),
]
#: every (K, dilation) the model's dilated branches use, float32
BRANCHES = sorted({kd for v in DILATED_BRANCHES.values() for kd in v} -
                  {(s[4], s[5]) for s in SHAPES})
#: the large kernels of the official archs
LARGE = [(1, 1, 18, 17, 17, 1), (1, 1, 15, 16, 15, 1), (1, 2, 13, 14, 13, 1)]


def _ids(p):
    return 'x'.join(map(str, p)) if isinstance(p, tuple) else str(p)


@pytest.mark.parametrize('shape,dtype', [
    (s, d) for s in SHAPES for d in TOL] + [
    ((1, 2, 2 * d * (k // 2) + 3, 2 * d * (k // 2) + 2, k, d), torch.float32)
    for k, d in BRANCHES] + [(s, d) for s in LARGE for d in TOL], ids=_ids)
def test_triton_dwconv_equals_float64_reference(shape, dtype):
    *dims, k, dilation = shape
    x, weight, bias, go = _case(*dims, k)
    want = _reference(x, weight, bias, go, dilation)
    got = _run(x, weight, bias, go, dilation, dtype)
    tol = TOL[dtype]
    for name, g, r in zip(('out', 'grad x', 'grad weight', 'grad bias'),
                          got, want):
        assert g.dtype == dtype and g.shape == r.shape, name
        assert _rel(g, r) < tol, (name, _rel(g, r))


def test_weight_grad_split_reduction_is_deterministic_and_exact():
    from overlock.ops import triton_dwconv
    x, weight, _, go = _case(2, 2, 12, 13, 5, seed=4)
    assert triton_dwconv.split_count(2, 25, 2 * 12 * 13) > 1
    xf, gf = x.float().to(DEVICE), go.float().to(DEVICE)
    grads = [triton_dwconv.weight_grad(xf, gf, 5, 2, 1) for _ in range(2)]
    assert torch.equal(*grads)
    _, _, want, _ = _reference(x, weight, torch.zeros(2, dtype=x.dtype), go, 1)
    assert _rel(grads[0], want) < 1e-5


def _ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at each value of ``ref``."""
    info = torch.finfo(dtype)
    _, exp = torch.frexp(ref)  # |ref| in [2^(exp-1), 2^exp)
    digits = {torch.float16: 11, torch.bfloat16: 8}[dtype]
    return torch.ldexp(torch.ones_like(ref), exp - digits).clamp_min(
        info.smallest_normal * info.eps)


#: (N, C, H, W, K, dilation): two row tiles of 64 and a ragged one, several
#: column tiles, a 64-column band (K = 19), dilated branches, maps smaller
#: than a tile
DOT_SHAPES = [(2, 2, 70, 37, 7, 2), (1, 1, 20, 41, 19, 1),
              (2, 3, 9, 11, 3, 7), (1, 2, 17, 5, 5, 1)]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize('shape', DOT_SHAPES, ids=_ids)
def test_tensor_core_kernels_round_the_exact_result_once(shape, dtype):
    """float16 / bfloat16 take the tensor-core kernels (``tl.dot`` with the
    banded weight matrix): products of two half-precision numbers are exact
    in float32, so each output, input gradient and weight gradient is the
    exact (float64) result of the rounded inputs, up to float32 summation
    (1e-6 of the sum of the products' magnitudes) and one rounding to
    ``dtype`` (1 ulp)."""
    from overlock.ops import triton_dwconv
    assert triton_dwconv.uses_tensor_cores(dtype)
    assert not triton_dwconv.uses_tensor_cores(torch.float32)
    *dims, k, dil = shape
    x, weight, bias, go = (t.to(dtype) for t in _case(*dims, k, seed=7))
    pad = dil * (k - 1) // 2
    c = x.shape[1]

    def exact(a, b, conv):  # the float64 result and the magnitudes' sum
        a, b = a.double(), b.double()
        return conv(a, b), conv(a.abs(), b.abs())

    def fwd(a, w):
        return F.conv2d(a, w, None, 1, pad, dil, c)

    def wgrad(a, g):
        return torch.nn.grad.conv2d_weight(a, (c, 1, k, k), g, 1, pad, dil,
                                           c)

    dev = [t.to(DEVICE) for t in (x, weight, bias, go)]
    got = {
        'out': triton_dwconv.forward(*dev[:3], pad, dil),
        'grad x': triton_dwconv.input_grad(dev[3], dev[1], pad, dil),
        'grad weight': triton_dwconv.weight_grad(dev[0], dev[3], k, pad,
                                                 dil)}
    want = {'out': exact(x, weight, fwd),
            'grad x': exact(go, weight.flip(-1, -2), fwd),
            'grad weight': exact(x, go, wgrad)}
    b = bias.double().view(1, -1, 1, 1)
    want['out'] = (want['out'][0] + b, want['out'][1] + b.abs())
    for name, (ref, mag) in want.items():
        g = got[name].cpu()
        assert g.dtype == dtype and g.shape == ref.shape, name
        err = (g.double() - ref).abs()
        bound = _ulp(ref, dtype) + 1e-6 * mag
        assert (err <= bound).all(), (name, (err / bound).max().item())


def test_tensor_core_weight_grad_splits_are_deterministic():
    """The tensor-core weight gradient over several splits of the tiles
    (each a float32 partial, added in a fixed order): the same bits twice,
    and the same numbers with one split."""
    from overlock.ops import triton_dwconv
    x, _, _, go = (t.half().to(DEVICE) for t in _case(2, 1, 40, 40, 5,
                                                      seed=8))
    grads = [triton_dwconv.weight_grad(x, go, 5, 2, 1) for _ in range(2)]
    assert torch.equal(*grads)
    old = triton_dwconv._TARGET_PROGRAMS
    try:
        triton_dwconv._TARGET_PROGRAMS = 1
        one = triton_dwconv.weight_grad(x, go, 5, 2, 1)
    finally:
        triton_dwconv._TARGET_PROGRAMS = old
    assert (one.double() - grads[0].double()).abs().max() <= \
        _ulp(grads[0].double(), torch.float16).max()


def test_autocast_casts_to_the_autocast_dtype():
    x, weight, bias, go = _case(1, 2, 7, 8, 5, seed=1)
    device = torch.device(DEVICE)
    xf = x.float().to(device)
    with overlock.options(kernels='triton'), \
            torch.autocast(device.type, dtype=torch.bfloat16):
        out = depthwise_conv2d(xf, weight.float().to(device),
                               bias.float().to(device), 2, 1)
    assert out.dtype == torch.bfloat16
    want, *_ = _reference(x, weight, bias, go, 1)
    assert _rel(out, want) < TOL[torch.bfloat16]


def test_float64_keeps_the_pytorch_path_channels_last_goes_nchw():
    """float64 stays with F.conv2d; a channels-last input (a LayerNorm's
    output) is made NCHW and takes the custom op, as it must on CUDA (cuDNN's
    channels-last depthwise kernels are ~9x slower)."""
    x, weight, bias, _ = _case(1, 2, 7, 8, 3, seed=2)
    with overlock.options(kernels='triton'), FlopCounterMode(
            display=False) as counter:
        out = depthwise_conv2d(x, weight, bias, 1)
    assert torch.ops.overlock.depthwise_conv2d not in \
        counter.get_flop_counts()['Global']
    with overlock.options(kernels='triton'), FlopCounterMode(
            display=False) as counter:
        out_cl = depthwise_conv2d(
            x.float().to(DEVICE).contiguous(
                memory_format=torch.channels_last),
            weight.float().to(DEVICE), bias.float().to(DEVICE), 1)
    assert torch.ops.overlock.depthwise_conv2d in \
        counter.get_flop_counts()['Global']
    assert out_cl.is_contiguous()
    want = F.conv2d(x, weight, bias, 1, 1, 1, 2)
    assert torch.equal(out, want) or _rel(out, want) < 1e-12
    assert _rel(out_cl, want) < 1e-5


def test_dilated_reparam_block_same_with_triton():
    """A whole large-kernel block (K=7 with its dilated branches and BNs),
    train-mode forward and backward: Triton equals the PyTorch path."""
    torch.manual_seed(0)
    block = DilatedReparamBlock(3, 7).to(DEVICE)
    x = torch.randn(2, 3, 9, 10, device=DEVICE)
    results = []
    for kernels in ('torch', 'triton'):
        block.zero_grad()
        xi = x.clone().requires_grad_()
        with overlock.options(kernels=kernels):
            out = block(xi)
            out.square().sum().backward()
        results.append((out.detach(), xi.grad,
                        block.lk_origin.weight.grad.clone(),
                        block.dil_conv_k3_2.weight.grad.clone()))
    for a, b in zip(*results):
        assert _rel(a, b.double().cpu()) < 1e-5


def test_custom_op_registration():
    """Fake tensor, autograd and schema registrations agree with the
    implementation (torch.library.opcheck)."""
    x, weight, bias, _ = _case(1, 2, 6, 7, 3, seed=5)
    args = (x.float().to(DEVICE).requires_grad_(),
            weight.float().to(DEVICE).requires_grad_(),
            bias.float().to(DEVICE), 1, 1)
    with overlock.options(kernels='triton'):
        torch.library.opcheck(torch.ops.overlock.depthwise_conv2d.default,
                              args, test_utils=('test_schema',
                                                'test_autograd_registration',
                                                'test_faketensor'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_default_is_aten_and_triton_is_forced_by_the_switch():
    """On CUDA the default runs ATen's depthwise kernels for float32 maps
    (faster than the Triton ones on an H100, and no custom-op dispatch;
    half precision is tuned per pass, ``tests/test_dwconv_tuning.py``);
    kernels='triton' runs the custom op. Same numbers."""
    x, weight, bias, _ = _case(2, 4, 12, 13, 7, seed=6)
    args = (x.float().cuda(), weight.float().cuda(), bias.float().cuda(), 3)
    outs = []
    for kernels in ('auto', 'triton'):
        with overlock.options(kernels=kernels), FlopCounterMode(
                display=False) as counter:
            outs.append(depthwise_conv2d(*args))
        used = torch.ops.overlock.depthwise_conv2d in \
            counter.get_flop_counts()['Global']
        assert used == (kernels == 'triton')
    assert _rel(outs[0], outs[1].double().cpu()) < 1e-5
