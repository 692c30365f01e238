"""The dilated re-param block's branches through one stacked BatchNorm:
the numbers, gradients, running statistics and counters of one BatchNorm
per branch, in fewer operations; the per-branch path where stacking would
not be the same (SyncBatchNorm, cumulative averages, reference mode)."""
import copy

import pytest
import torch
from torch import nn

import overlock
from overlock.layers import (DilatedReparamBlock, stackable_batch_norms,
                             stacked_batch_norm)
from overlock.recompute import KeepRunningStats


def _block(seed=0, kernel_size=7, channels=6):
    torch.manual_seed(seed)
    block = DilatedReparamBlock(channels, kernel_size)
    with torch.no_grad():
        for name, t in block.state_dict().items():
            if name.endswith('running_var'):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.normal_(0, 0.3)
    return block


def _run(block, x, reference):
    x = x.clone().requires_grad_()
    with overlock.options(reference=reference):
        out = block(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in block.parameters()]


def _bns(block):
    return [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize('training', [True, False])
def test_stacked_equals_per_branch(training):
    """Training (batch statistics, running statistics updated, counters
    counted) and eval with gradients (running statistics used)."""
    new = _block().train(training)
    ref = copy.deepcopy(new)
    x = torch.randn(2, 6, 11, 13)
    for _ in range(2):  # the second step sees the updated statistics
        got, want = _run(new, x, False), _run(ref, x, True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(new.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    counts = {int(bn.num_batches_tracked) for bn in _bns(new)}
    assert counts == ({2} if training else {0})


def test_momentum_zero_keeps_statistics():
    """Inside the recomputation's ``KeepRunningStats`` nothing changes."""
    block = _block().train()
    before = copy.deepcopy(block.state_dict())
    with KeepRunningStats([block]):
        block(torch.randn(2, 6, 9, 9))
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_batch_norm_per_block():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket is torch.ops.aten.native_batch_norm
            return func(*args, **(kwargs or {}))

    block = _block(kernel_size=13).train()
    assert len(_bns(block)) == 7
    with Count() as count:
        block(torch.randn(2, 6, 16, 16))
    assert count.n == 1


@pytest.mark.parametrize('change', ['sync', 'cumulative', 'eps', 'mixed'])
def test_per_branch_when_stacking_differs(change):
    block = _block().train()
    bns = _bns(block)
    assert stackable_batch_norms(bns)
    if change == 'sync':
        block = nn.SyncBatchNorm.convert_sync_batchnorm(block)
        bns = [m for m in block.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    elif change == 'cumulative':
        bns[1].momentum = None
    elif change == 'eps':
        bns[2].eps = 1e-3
    else:
        bns[0].eval()
    assert not stackable_batch_norms(bns)
    if change in ('cumulative', 'eps', 'mixed'):  # SyncBN needs a group
        ref = copy.deepcopy(block)
        x = torch.randn(2, 6, 9, 9)
        for a, b in zip(_run(block, x, False), _run(ref, x, True)):
            torch.testing.assert_close(a, b)
        for k, v in block.state_dict().items():
            torch.testing.assert_close(v, ref.state_dict()[k], msg=k)


def test_stacked_batch_norm_function():
    """The function alone: a stack of three BatchNorms' inputs."""
    bns = [nn.BatchNorm2d(4) for _ in range(3)]
    for i, bn in enumerate(bns):
        with torch.no_grad():
            bn.weight.fill_(i + 1.)
            bn.running_mean.fill_(i)
    ref = copy.deepcopy(bns)
    y = torch.randn(2, 12, 5, 5)
    out = stacked_batch_norm(y, bns)
    want = torch.cat([bn(part) for bn, part in zip(ref, y.chunk(3, 1))], 1)
    torch.testing.assert_close(out, want)
    for a, b in zip(bns, ref):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert a.num_batches_tracked == b.num_batches_tracked == 1
