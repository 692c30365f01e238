"""The eager recomputed segment (``overlock.recompute.segment``): the
numbers of plain autograd, only its inputs kept, its pointwise convolution
run once, BatchNorm statistics updated once, frozen parameters left
alone."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from overlock.layers import chain
from overlock.recompute import segment


def _modules(seed=0, bias=True):
    torch.manual_seed(seed)
    mods = [nn.BatchNorm2d(6), nn.GELU(),
            nn.Conv2d(6, 6, 3, padding=1, groups=6),
            nn.Conv2d(6, 10, 1, bias=bias)]
    for m in mods:
        m.train()
    with torch.no_grad():  # non-trivial affine BatchNorm
        mods[0].weight.uniform_(0.5, 1.5)
        mods[0].bias.uniform_(-0.5, 0.5)
    return mods


def _grads(out, x, mods, seed=1):
    torch.manual_seed(seed)
    g = torch.randn_like(out)
    params = [p for m in mods for p in m.parameters()]
    return torch.autograd.grad(out, [x] + params, g)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_segment_equals_plain_autograd(bias, dtype):
    """Output and gradients (input and every parameter) bit for bit those
    of running the modules under autograd, in float32 and under CPU bf16
    autocast (the pointwise convolution's backward done by hand casts as
    autocast does)."""
    results = []
    for run in (chain, lambda mods, x: segment(mods, x)):
        mods = _modules(bias=bias)
        x = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(3))
        x.requires_grad_(True)
        with torch.autocast('cpu', dtype or torch.bfloat16,
                            enabled=dtype is not None):
            out = run(mods, x)
        results.append((out, _grads(out, x, mods),
                        mods[0].running_mean.clone(),
                        mods[0].num_batches_tracked.clone()))
    (out, grads, mean, count), (out2, grads2, mean2, count2) = results
    assert out2.dtype == (dtype or torch.float32)
    assert torch.equal(out, out2)
    assert len(grads) == len(grads2) == (7 if bias else 6)
    for a, b in zip(grads, grads2):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # the statistics moved once (not again in the backward)
    assert torch.equal(mean, mean2) and count.item() == count2.item() == 1


def test_segment_keeps_only_its_inputs_and_runs_the_conv_once():
    mods = _modules()
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    class Convs(TorchDispatchMode):
        pointwise = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.convolution and \
                    args[1].shape[-1] == 1:
                self.pointwise += 1
            return func(*args, **(kwargs or {}))

    with Convs() as convs:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = segment(mods, x)
        maps = [t for t in kept if t.dim() == 4 and t.shape[0] == 2]
        assert len(maps) == 1 and maps[0] is x
        out.sum().backward()
    assert convs.pointwise == 1
    assert all(p.grad is not None for m in mods for p in m.parameters())


def test_segment_with_head_and_frozen_parameters():
    """``head`` runs before the last module; frozen parameters get no
    gradient; nothing requiring grad: the modules simply run."""
    mods = _modules()
    for p in mods[0].parameters():
        p.requires_grad_(False)
    gate = torch.rand(2, 6, 9, 11, requires_grad=True)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)

    def head(g, y):
        return chain(mods[:3], g * y)

    out = segment(mods, gate, x, head=head)
    torch.testing.assert_close(out, mods[3](head(gate, x)))
    out.sum().backward()
    assert gate.grad is not None and x.grad is not None
    assert mods[0].weight.grad is None and mods[3].weight.grad is not None

    for p in (q for m in mods for q in m.parameters()):
        p.requires_grad_(False)
    out = segment(mods, x.detach())
    assert out.grad_fn is None


def test_segment_ending_in_another_module_uses_autograd():
    """A last module that is not a plain zero-padded ``nn.Conv2d`` is
    differentiated by autograd like the others."""
    mods = _modules()
    mods[3] = nn.Conv2d(6, 10, 3, padding=1, padding_mode='reflect')
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    grads = [_grads(run(mods, x), x, mods) for run in
             (chain, lambda mods, x: segment(mods, x))]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_segment_under_saved_tensor_hooks_that_copy():
    """Hooks that store copies (as ``save_on_cpu`` does) change neither the
    gradients nor which tensors get one."""
    grads = []
    for hooks in (False, True):
        mods = _modules()
        x = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(3))
        x.requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: t.detach().clone() if hooks else t, lambda t: t):
            out = segment(mods, x)
        grads.append(_grads(out, x, mods))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_segment_forward_takes_the_training_path():
    """Inside a segment's forward (no autograd recording) the layers take
    the paths they take while recording (``needs_grad`` answers as if grad
    mode were on), so that the backward's recomputation reproduces the
    forward's bits: a layer with another no-grad path (GRN's one-pass
    formula) gives its training path's output."""
    from overlock.ops.dispatch import as_if_recorded, needs_grad
    w = torch.ones(1, requires_grad=True)
    with torch.no_grad():
        assert not needs_grad(w)
        with as_if_recorded():
            assert needs_grad(w) and not needs_grad(w.detach())
        assert not needs_grad(w)

    class Probe(nn.Module):  # marks which path ran
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w + (1. if needs_grad(x, self.w) else 2.)

    probe = Probe()
    x = torch.zeros(3, requires_grad=True)
    out = segment([probe], x)
    assert out.tolist() == [1., 1., 1.]
    out.sum().backward()
    assert probe.w.grad.item() == 0. and x.grad.tolist() == [1., 1., 1.]
