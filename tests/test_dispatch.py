"""The custom ops' eager fast path (``overlock/ops/dispatch.py``): in plain
eager execution the Triton-backed operators (ContMix aggregation, Triton
depthwise convolution) run their implementations without the custom op's
dispatch, with the same numbers; compilation, dispatch modes and functorch
transforms keep the custom op. The Triton kernels run in the interpreter
(conftest.py)."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import overlock
from conftest import randomize_
from overlock.layers import DilatedReparamBlock
from overlock.ops import contmix, dwconv
from overlock.ops.contmix_weights import softmax_aggregate
from overlock.ops.dispatch import direct

pytest.importorskip('triton')


class PassThrough(TorchDispatchMode):
    """A dispatch mode that changes nothing (forces the custom ops)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _refuse(name):
    def op(*args, **kwargs):
        raise AssertionError(f'{name} dispatched in eager execution')
    return op


def test_direct_only_in_plain_eager_execution(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    x = torch.randn(3)
    assert direct(x, None) and direct(torch.nn.Parameter(x))
    with FlopCounterMode(display=False):
        assert not direct(x)
    with PassThrough():
        assert not direct(x)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    assert not direct(fake)  # a tensor subclass, even outside its mode
    assert torch.func.vmap(lambda t: t * direct(t))(torch.ones(2, 3)) \
        .eq(0).all()
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert not direct(x)


def _run(fn, inputs):
    """``fn``'s outputs and its inputs' gradients (of a weighted sum)."""
    inputs = [t.clone().requires_grad_(t.is_floating_point())
              for t in inputs]
    outs = fn(*inputs)
    sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs)).backward()
    return [o.detach() for o in outs] + [t.grad for t in inputs
                                         if t.grad is not None]


def _block_step(dtype):
    torch.manual_seed(0)
    block = randomize_(DilatedReparamBlock(4, 7), seed=1).to(dtype)
    x = torch.randn(2, 4, 9, 10, dtype=dtype)
    got = _run(lambda t: [block.train()(t)], [x])
    got += [block.lk_origin.weight.grad, block.dil_conv_k3_2.weight.grad]
    block.zero_grad(set_to_none=True)
    with torch.no_grad():
        got.append(block.eval()(x))
    return got


def _contmix_step(dtype):
    gen = torch.Generator().manual_seed(0)
    b, g, h, w, c, s, k = 2, 2, 8, 9, 3, 3, 5

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    inputs = [rand(b, g, h * w, c), rand(b, g, c, s * s + k * k),
              rand(s * s + k * k), rand(g, 2 * s - 1, 2 * s - 1),
              rand(g, 2 * k - 1, 2 * k - 1), rand(b, g, h, w, 4),
              rand(b, g, h, w, 4)]
    got = _run(lambda *t: softmax_aggregate(*t, s, k), inputs)
    attn = rand(b, g, h, w, k * k).softmax(-1)
    got.append(contmix.contmix_aggregate(attn, inputs[-1], k))  # no grad
    return got


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('step', [_block_step, _contmix_step],
                         ids=['depthwise', 'contmix'])
def test_eager_path_skips_the_custom_ops_with_the_same_bits(monkeypatch,
                                                            step, dtype):
    """With ``kernels='triton'`` (Triton kernels for every depthwise
    convolution and ContMix aggregation): a dilated re-param block's
    training step and eval forward, the ContMix weights and aggregation's
    forward and backward (the training path) and an aggregation without
    autograd (the eval path). With the custom ops forbidden in eager
    execution: the same bits as through them (forced by a dispatch
    mode)."""
    with overlock.options(kernels='triton'):
        with PassThrough():
            want = step(dtype)
        for name in ('_conv_op', '_conv_backward_op'):
            monkeypatch.setattr(dwconv, name, _refuse(name))
        for name in ('_aggregate_op', '_aggregate_backward_op'):
            monkeypatch.setattr(contmix, name, _refuse(name))
        got = step(dtype)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == dtype and torch.equal(a, b)


def test_depthwise_eager_function_gradients_only_where_needed():
    """The eager ``autograd.Function`` of the Triton depthwise convolution:
    gradients of the inputs that need them, none for the others, equal to
    the custom op's."""
    x = torch.randn(1, 2, 9, 10)
    w = torch.randn(2, 1, 5, 5)
    b = torch.randn(2)
    results = []
    for mode in (PassThrough, None):
        xi, wi, bi = x.clone(), w.clone().requires_grad_(), b.clone()
        with overlock.options(kernels='triton'), \
                (mode() if mode else contextlib.nullcontext()):
            out = dwconv.depthwise_conv2d(xi, wi, bi, 2)
            out.square().sum().backward()
        assert xi.grad is None and bi.grad is None
        results.append((out.detach(), wi.grad))
    assert all(torch.equal(a, b) for a, b in zip(*results))
