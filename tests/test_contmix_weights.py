"""The ContMix weights recomputed in the backward (``softmax_aggregate``)
and the aggregation taking float32 weights with half-precision values: same
numbers as plain autograd, and the weights are not kept for the backward."""
import importlib.util

import pytest
import torch

import overlock
from overlock.blocks import DynamicConvBlock
from overlock.ops import contmix_aggregate, contmix_aggregate_reference
from overlock.ops.contmix_weights import contmix_weights, softmax_aggregate

KERNELS = ['torch'] + (['triton'] if importlib.util.find_spec('triton')
                       else [])


def _inputs(b=2, g=2, h=7, w=9, c=3, small=3, large=5, dtype=torch.float64,
            seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    n = small * small + large * large
    return dict(q=rand(b, g, h * w, c), kw=rand(b, g, c, n), proj_b=rand(n),
                rpb1=rand(g, 2 * small - 1, 2 * small - 1),
                rpb2=rand(g, 2 * large - 1, 2 * large - 1),
                value1=rand(b, g, h, w, c + 1), value2=rand(b, g, h, w, c))


def _plain(q, kw, proj_b, rpb1, rpb2, value1, value2, small, large):
    """Plain autograd: the weights kept, the reference aggregation."""
    b, g, h, w, _ = value1.shape
    a1, a2 = contmix_weights(q, kw, proj_b, rpb1, rpb2, h, w, small, large)
    return (contmix_aggregate_reference(a1.view(b, g, h, w, -1), value1,
                                        small),
            contmix_aggregate_reference(a2.view(b, g, h, w, -1), value2,
                                        large))


@pytest.mark.parametrize('small,large,h,w', [(3, 5, 7, 9), (3, 7, 7, 8),
                                             (5, 5, 6, 5)])
def test_softmax_aggregate_equals_plain_autograd(small, large, h, w):
    if min(h, w) < large:
        h = w = large
    args = _inputs(h=h, w=w, small=small, large=large)
    gen = torch.Generator().manual_seed(1)
    ref_in = {k: v.clone().requires_grad_() for k, v in args.items()}
    new_in = {k: v.clone().requires_grad_() for k, v in args.items()}
    ref = _plain(**ref_in, small=small, large=large)
    out = softmax_aggregate(**new_in, small=small, large=large)
    grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in ref]
    torch.autograd.backward(ref, grads)
    torch.autograd.backward(out, grads)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    for k in args:
        torch.testing.assert_close(new_in[k].grad, ref_in[k].grad,
                                   rtol=1e-9, atol=1e-11, msg=k)


def test_softmax_aggregate_gradcheck():
    args = _inputs(b=1, g=1, h=5, w=6, c=2, small=3, large=5)
    inputs = tuple(v.requires_grad_() for v in args.values())
    assert torch.autograd.gradcheck(
        lambda *t: softmax_aggregate(*t, small=3, large=5), inputs)


def test_softmax_aggregate_only_some_gradients():
    """Inputs without gradient get none; the others the plain ones."""
    args = _inputs()
    ref_in = {k: v.clone().requires_grad_(k in ('q', 'value2'))
              for k, v in args.items()}
    new_in = {k: v.clone().requires_grad_(k in ('q', 'value2'))
              for k, v in args.items()}
    sum(o.sum() for o in _plain(**ref_in, small=3, large=5)).backward()
    sum(o.sum() for o in softmax_aggregate(**new_in, small=3,
                                           large=5)).backward()
    for k in args:
        if k in ('q', 'value2'):
            torch.testing.assert_close(new_in[k].grad, ref_in[k].grad)
        else:
            assert new_in[k].grad is None


def test_softmax_aggregate_bad_shapes():
    args = _inputs()
    args['value2'] = args['value2'][:, :, :, :4]  # 7 x 4 map, kernel 5
    with pytest.raises(ValueError, match='do not match'):
        softmax_aggregate(**args, small=3, large=5)
    args = _inputs(h=4, w=9, small=3, large=5)
    with pytest.raises(ValueError, match=r'at least 5 x 5'):
        softmax_aggregate(**args, small=3, large=5)
    args = _inputs()
    with pytest.raises(ValueError, match=r'3\^2 \+ 7\^2'):
        softmax_aggregate(**args, small=3, large=7)


@pytest.mark.parametrize('kernels', KERNELS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_aggregate_float32_weights_half_values(kernels, dtype):
    """float32 weights are used as they are with half values: output in the
    values' dtype, weight gradient float32, both close to float64."""
    gen = torch.Generator().manual_seed(2)
    attn = torch.rand(1, 2, 7, 6, 9, generator=gen, dtype=torch.float64)
    attn = attn / attn.sum(-1, keepdim=True)
    value = torch.randn(1, 2, 7, 6, 5, generator=gen, dtype=torch.float64)
    go = torch.randn(1, 2, 7, 6, 5, generator=gen, dtype=torch.float64)
    ra, rv = attn.clone().requires_grad_(), value.clone().requires_grad_()
    ref = contmix_aggregate_reference(ra, rv, 3)
    ref.backward(go)
    a = attn.float().requires_grad_()
    v = value.to(dtype).requires_grad_()
    with overlock.options(kernels=kernels):
        out = contmix_aggregate(a, v, 3)
        out.backward(go.to(dtype))
    assert out.dtype == dtype and v.grad.dtype == dtype
    assert a.grad.dtype == torch.float32
    tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    for got, want in ((out, ref), (a.grad, ra.grad), (v.grad, rv.grad)):
        err = (got.detach().double() - want.detach()).abs().max()
        assert err / want.abs().max() < tol


def _saved_shapes(block, x, autocast):
    """Shapes of the tensors a training forward keeps for the backward."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = block(x, x[:, :12], None)[0]
    return out, shapes


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize('autocast', [False, True])
def test_block_keeps_no_contmix_weights(autocast):
    """With ``selective_cp`` a training Focus-Net block keeps neither set of
    weights ``(B, G, H*W, S*S | K*K)`` (nor a half copy of them); without
    it, it does. Same numbers (under autocast: as close to float32)."""
    torch.manual_seed(0)
    blocks = {cp: DynamicConvBlock(16, 48, kernel_size=7, smk_size=5,
                                   num_heads=2, is_first=True,
                                   selective_cp=cp).train()
              for cp in (True, False)}
    blocks[True].load_state_dict(blocks[False].state_dict())
    x = torch.randn(2, 16, 9, 10)
    weights = {(2, 4, 90, 25), (2, 4, 90, 49), (2, 4, 9, 10, 25),
               (2, 4, 9, 10, 49)}
    results = {}
    for cp, amp in ((True, autocast), (False, autocast), ('fp32', False)):
        block = blocks[cp is True]
        block.zero_grad()
        xi = x.clone().requires_grad_()
        out, shapes = _saved_shapes(block, xi, amp)
        kept = weights & set(shapes)
        assert not kept if cp is True else kept, (cp, kept)
        out.float().square().sum().backward()
        results[cp] = [out.detach(), xi.grad] + [
            p.grad.clone() for n, p in block.named_parameters()
            if n.startswith(('weight_', 'rpb'))]
    for new, old, ref in zip(results[True], results[False],
                             results['fp32']):
        if autocast:  # bfloat16 roundings differ: as far from float32
            assert _rel(new, ref) < 1.5 * _rel(old, ref) + 1e-3
        else:
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
