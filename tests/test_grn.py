"""GRN's written-out backward (``_GRNFunction``, used whenever a gradient
is needed): the numbers of autograd through the official formula, in fewer
operations; channels that are all zero; half precision; the plain path
without gradients."""
import pytest
import torch

import overlock
from overlock.layers import GRN, _GRNFunction


def _grn(dim=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    grn = GRN(dim).to(dtype)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    return grn


def _grads(grn, x, reference, grad_out):
    x = x.clone().requires_grad_()
    grn.zero_grad(set_to_none=True)
    with overlock.options(reference=reference):
        out = grn(x)
    out.backward(grad_out)
    return out.detach(), x.grad, grn.gamma.grad, grn.beta.grad


@pytest.mark.parametrize('shape', [(2, 6, 5, 7), (1, 6, 1, 1), (3, 6, 9, 4)])
def test_equals_official_formula_in_float64(shape):
    grn = _grn()
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    got = _grads(grn, x, False, g)
    want = _grads(grn, x, True, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    grn = _grn()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, g, b: _GRNFunction.apply(x, g, b, GRN.eps),
        (x, grn.gamma, grn.beta))


def test_zero_channel_has_finite_gradients():
    """A channel that is 0 everywhere has norm 0: autograd's norm backward
    gives 0 there, and so does the written-out one (no 0 / 0)."""
    grn = _grn()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    x[1, 2] = 0
    g = torch.randn_like(x)
    got = _grads(grn, x, False, g)
    want = _grads(grn, x, True, g)
    assert all(torch.isfinite(t).all() for t in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_only_some_inputs_need_gradients():
    grn = _grn()
    grn.gamma.requires_grad_(False)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    out = grn(x)  # x needs none, beta does: the function still runs
    assert out.grad_fn is not None and 'GRNFunction' in type(
        out.grad_fn).__name__
    out.sum().backward()
    assert grn.gamma.grad is None
    torch.testing.assert_close(
        grn.beta.grad, torch.full_like(grn.beta, 2 * 4 * 5))


def test_no_gradient_path_is_plain():
    grn = _grn()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        out = grn(x)
    with overlock.options(reference=True):
        want = grn(x)
    torch.testing.assert_close(out, want.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype):
    """Half-precision ``x`` with float32 parameters (autocast's case): the
    output and ``x``'s gradient in ``x``'s dtype, the parameters' in
    float32, all as close to float64 as the plain autograd path is."""
    grn = _grn(dtype=torch.float32)
    x = torch.randn(2, 6, 8, 8)
    g = torch.randn(2, 6, 8, 8)
    exact = _grads(_grn(), x.double(), True, g.double())
    got = _grads(grn, x.to(dtype), False, g.to(dtype))
    plain = _grads(grn, x.to(dtype), True, g.to(dtype))
    assert got[0].dtype == got[1].dtype == dtype
    assert got[2].dtype == got[3].dtype == torch.float32
    for a, b, e in zip(got, plain, exact):
        err = (a.double() - e).abs().max().item()
        err_plain = (b.double() - e).abs().max().item()
        scale = e.abs().max().item()
        assert err <= max(1.5 * err_plain, 1e-3 * scale), (err, err_plain)


def test_fewer_operations():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    grn = _grn(dtype=torch.float32)
    x = torch.randn(2, 6, 5, 7)
    g = torch.randn_like(x)
    counts = []
    for reference in (True, False):
        Count.n = 0
        with Count():
            _grads(grn, x, reference, g)
        counts.append(Count.n)
    assert counts[1] < counts[0] - 5, counts


def test_traced_path_equals_the_function(monkeypatch):
    """While dynamo traces (here: ``is_compiling`` forced in eager
    execution), GRN uses autograd's formula instead of the function, with
    ``eps`` as a literal (``GRN.eps``): the same numbers, a zero channel's
    gradients included."""
    assert GRN.eps == 1e-6
    grn = _grn()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    x[1, 2] = 0
    g = torch.randn_like(x)
    want = _grads(grn, x, False, g)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    got = _grads(grn, x, False, g)
    x2 = x.clone().requires_grad_()
    assert 'GRNFunction' not in type(grn(x2).grad_fn).__name__
    assert all(torch.isfinite(t).all() for t in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
