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
    """Inference under autocast leaves the fused float32 CPU path (its oneDNN
    calls would meet autocast's bf16 tensors) and stays close to it."""
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
