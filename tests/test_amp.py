"""Mixed precision on CPU: the backbone under bfloat16 autocast, forward and
backward, against float32 (the ContMix logits and softmax, the GRN norms and
the ContMix accumulation stay in float32; see the README, "Mixed
precision")."""
import pytest
import torch

from conftest import TINY_ARCH
from overlock import OverLoCK
from overlock.layers import GRN

#: relative L2 error of bfloat16 autocast against float32 (bfloat16 keeps 8
#: bits: ~0.4 % per rounding, a few % through the network)
OUT_TOL = 0.03
GRAD_TOL = 0.06


def _step(model, x, amp):
    model.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()
                       if p.grad is not None])
    return [o.detach().float() for o in outs], grads, loss.item()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_bf16_autocast_train_step_close_to_fp32():
    torch.manual_seed(0)
    model = OverLoCK(TINY_ARCH, fuse_overview=True).train()
    x = torch.randn(2, 3, 64, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_outs, ref_grads, _ = _step(model, x, amp=False)
    model.load_state_dict(state)  # same BN statistics for both
    outs, grads, loss = _step(model, x, amp=True)
    assert torch.isfinite(torch.tensor(loss))
    assert torch.isfinite(grads).all()
    assert all(torch.isfinite(o).all() for o in outs)
    for o, r in zip(outs, ref_outs):
        assert _rel(o, r) < OUT_TOL
    assert _rel(grads, ref_grads) < GRAD_TOL


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_grn_norms_in_float32(dtype):
    """A map whose sum of squares overflows float16 (65504): the norm is
    taken in float32, the output keeps the input's dtype."""
    torch.manual_seed(0)
    grn = GRN(4)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(1, 4, 64, 64) * 30  # sum of squares ~ 3.7e6
    grn_d = GRN(4).double()
    grn_d.load_state_dict(grn.state_dict())
    want = grn_d(x.to(dtype).double())
    out = grn(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert ((out.double() - want).abs().max() / want.abs().max()) < tol


def test_bf16_autocast_eval_close_to_fp32():
    """Inference under autocast runs the fused path's generic flavour (in
    bfloat16, on folded weights cast once) and stays close to float32."""
    torch.manual_seed(0)
    model = OverLoCK(TINY_ARCH, fuse_overview=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
    for o, r in zip(outs, ref):
        assert torch.isfinite(o).all()
        assert _rel(o.float(), r) < OUT_TOL


def test_norm_output_cast_once_for_all_branches(monkeypatch):
    """Under autocast a float32 input (a norm's output: float32 under CUDA
    autocast) is cast once for the dilated re-param block's eight
    convolutions, not once per convolution, and its gradient cast back
    once. The convolutions run in bfloat16 as on a GPU or a CPU with
    oneDNN bfloat16 kernels (elsewhere the CPU computes them in float32,
    casting per convolution: tests/test_ops.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from overlock.layers import DilatedReparamBlock
    from overlock.ops import dwconv
    monkeypatch.setattr(dwconv, 'has_half_kernels', lambda dtype: True)

    class MapCasts(TorchDispatchMode):
        """Casts of (2, 8, H, W) tensors: activations and their gradients
        (the parameters have other shapes)."""

        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten._to_copy and \
                    tuple(args[0].shape[:2]) == (2, 8):
                self.n += 1
            return func(*args, **(kwargs or {}))

    block = DilatedReparamBlock(8, 13).train()
    x = torch.randn(2, 8, 20, 20, requires_grad=True)
    with MapCasts() as casts:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = block(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    # x and its gradient back; out.float() and its gradient
    assert casts.n == 4
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = block(x.detach().to(torch.bfloat16))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_layer_scale_keeps_half_input(dtype):
    """A LayerScale on a half map under autocast: the float32 result and
    gradients of GPU autocast's promotion (a float32 copy of the map, kept
    for the backward; ``tests/test_cuda_dispatch.py`` checks it is not
    made), bit for bit, keeping the half map itself."""
    from overlock.layers import LayerScale
    torch.manual_seed(0)
    ls = LayerScale(8, 0.5)
    with torch.no_grad():
        ls.weight.normal_()
        ls.bias.normal_()
    x = torch.randn(2, 8, 5, 6).to(dtype).requires_grad_()
    g = torch.randn(2, 8, 5, 6)
    results, kept = [], []

    def pack(t):
        kept.append(t)
        return t

    for ours in (True, False):
        ls.zero_grad()
        x.grad = None
        kept.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if ours:
                with torch.autocast('cpu', dtype=dtype):
                    out = ls(x)
            else:  # what GPU autocast does: x promoted to a float32 copy
                out = torch.addcmul(ls.bias.view(1, -1, 1, 1), x.float(),
                                    ls.weight.view(1, -1, 1, 1))
        maps = [t for t in kept if t.shape == x.shape]
        assert [t.dtype for t in maps] == [dtype if ours else torch.float32]
        out.backward(g)
        results.append((out, x.grad, ls.weight.grad, ls.bias.grad))
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)
