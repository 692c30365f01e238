"""The Triton ContMix kernels against the float64 reference, forward and both
gradients, float32 / float16 / bfloat16. Without a GPU they run in Triton's
interpreter (``TRITON_INTERPRET=1``, set by conftest.py before triton is
imported): the same code as on the GPU."""
import pytest
import torch

import overlock
from overlock.ops import contmix_aggregate, contmix_aggregate_reference

pytest.importorskip('triton')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
#: relative to the reference's largest value
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _case(b, g, h, w, c, k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    attn = torch.rand(b, g, h, w, k * k, generator=gen, dtype=torch.float64)
    attn = attn / attn.sum(-1, keepdim=True)
    value = torch.randn(b, g, h, w, c, generator=gen, dtype=torch.float64)
    go = torch.randn(b, g, h, w, c, generator=gen, dtype=torch.float64)
    return attn, value, go


def _rel(a, b):
    return ((a.double().cpu() - b).abs().max() / b.abs().max()).item()


SHAPES = [
    (1, 2, 7, 9, 5, 3),     # odd map, odd channels
    (2, 1, 6, 11, 3, 5),    # batch 2, wide map
    (1, 1, 9, 8, 40, 7),    # channels over one block
]
#: the largest kernel, map barely larger (float32 only: ~90 s interpreted)
LARGEST = (1, 1, 17, 19, 2, 17)


@pytest.mark.parametrize('shape,dtype', [
    (s, d) for s in SHAPES for d in TOL] + [(LARGEST, torch.float32)],
    ids=lambda p: 'x'.join(map(str, p)) if isinstance(p, tuple) else str(p))
def test_triton_kernels_equal_reference(shape, dtype):
    *dims, k = shape
    attn, value, go = _case(*dims, k, dtype)
    ref_a, ref_v = attn.clone().requires_grad_(), value.clone().requires_grad_()
    ref = contmix_aggregate_reference(ref_a, ref_v, k)
    ref.backward(go)
    a = attn.to(DEVICE, dtype).requires_grad_()
    v = value.to(DEVICE, dtype).requires_grad_()
    with overlock.options(kernels='triton'):
        out = contmix_aggregate(a, v, k)
        out.backward(go.to(DEVICE, dtype))
    assert out.dtype == dtype and a.grad.dtype == dtype
    tol = TOL[dtype]
    assert _rel(out.detach(), ref.detach()) < tol
    assert _rel(a.grad, ref_a.grad) < tol
    assert _rel(v.grad, ref_v.grad) < tol


def test_triton_only_value_or_attn_gradient():
    attn, value, go = _case(1, 1, 6, 7, 3, 3, torch.float32)
    with overlock.options(kernels='triton'):
        a = attn.to(DEVICE, torch.float32).requires_grad_()
        out = contmix_aggregate(a, value.to(DEVICE, torch.float32), 3)
        (ga, ) = torch.autograd.grad(out, a, go.to(DEVICE, torch.float32))
    ref_a = attn.clone().requires_grad_()
    (want, ) = torch.autograd.grad(
        contmix_aggregate_reference(ref_a, value, 3), ref_a, go)
    assert _rel(ga, want) < 1e-5


def test_triton_is_deterministic():
    attn, value, go = _case(1, 2, 9, 10, 6, 5, torch.float32, seed=3)
    grads = []
    for _ in range(2):
        v = value.to(DEVICE, torch.float32).requires_grad_()
        with overlock.options(kernels='triton'):
            contmix_aggregate(attn.to(DEVICE, torch.float32), v,
                              5).backward(go.to(DEVICE, torch.float32))
        grads.append(v.grad)
    assert torch.equal(*grads)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    if DEVICE == 'cuda':
        pytest.skip('the interpreter is only needed on CPU')
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    attn, value, _ = _case(1, 1, 5, 5, 2, 3, torch.float32)
    with overlock.options(kernels='triton'), \
            pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        contmix_aggregate(attn.float(), value.float(), 3)


def test_default_kernels_leave_cpu_tensors_to_pytorch(monkeypatch):
    from overlock.ops import accelerators
    assert overlock.get_options()['kernels'] == 'auto'
    assert accelerators.triton_kernels(torch.zeros(1)) is None
    with overlock.options(kernels='torch'):
        assert accelerators.triton_kernels(torch.zeros(1)) is None
