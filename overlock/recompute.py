"""Activation recomputation for training (``with_cp`` and ``selective_cp``).

* ``with_cp``: a whole block is recomputed in the backward (its DropPath
  random draws replayed);
* ``selective_cp``: only the cheap segments of a block (norms, activations,
  depthwise and large-kernel convolutions with their BatchNorms) are; the
  expensive 1x1 convolutions and the ContMix aggregation keep their outputs.

Either way the BatchNorm running statistics of a recomputed segment are put
back after the recomputation, so that each training step updates them once.

Under ``torch.compile`` the same segments are checkpointed without the
``context_fn`` that keeps the statistics (dynamo cannot trace it, and needs
it not: the traced BatchNorms update their statistics once, in the forward
graph): dynamo turns the checkpoint into tags that make AOTAutograd's
partitioner recompute those segments in the backward, as in eager mode.
Without them the partitioner kept ~1.7x the activations (a tiny arch at
128x128: 8.1 MB against eager's 4.8 MB; with them 4.7 MB).
"""
import contextlib
import functools
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .layers import chain
from .reparam import submodules

__all__ = ['KeepRunningStats', 'recompute', 'Recompute']


class KeepRunningStats:
    """Leaves the running statistics of the BatchNorms under ``modules``
    unchanged inside the block (used around a backward-time
    recomputation).

    ``nn.BatchNorm*`` (no tensor operation): inside, ``momentum`` is 0 (the
    update ``(1 - m) * running + m * batch`` keeps ``running`` exactly) and
    the ``num_batches_tracked`` buffer is detached (``None``: the batch is
    not counted); the forward still normalises with the batch statistics
    and saves the same tensors for its backward, as the checkpoint
    requires. ``nn.SyncBatchNorm`` (which always counts): momentum 0, and
    the counter decremented on exit. Any other BatchNorm class: its three
    buffers saved and restored (six operations, as before for all: ~18% of
    the operations of an OverLoCK-T training step, on a GPU each a kernel
    launch). Inside the block a ``state_dict`` lacks the detached counters.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        bns = [m for mod in modules for m in submodules(mod)
               if isinstance(m, _BatchNorm) and m.training
               and m.track_running_stats]
        self.bns = list({id(m): m for m in bns}.values())  # each once

    def __enter__(self):
        self.saved = []
        for m in self.bns:
            if type(m).forward is _BatchNorm.forward:
                how = 'detach'
                state = (m.momentum, m.num_batches_tracked)
                m.num_batches_tracked = None
                m.momentum = 0.
            elif isinstance(m, nn.SyncBatchNorm):
                how, state = 'decrement', m.momentum
                m.momentum = 0.
            else:
                how = 'restore'
                state = [t.clone() for t in (m.running_mean, m.running_var,
                                             m.num_batches_tracked)]
            self.saved.append((how, state))

    def __exit__(self, *exc):
        for m, (how, state) in zip(self.bns, self.saved):
            if how == 'detach':
                m.momentum, m.num_batches_tracked = state
            elif how == 'decrement':
                m.momentum = state
                with torch.no_grad():
                    m.num_batches_tracked.sub_(1)
            else:
                with torch.no_grad():
                    for buf, value in zip((m.running_mean, m.running_var,
                                           m.num_batches_tracked), state):
                        buf.copy_(value)
        self.saved = None


def _compiling() -> bool:
    # no log line here: a logging call inside traced code is a graph break
    return torch.compiler.is_compiling()


def recompute(fn: Callable, modules: Sequence[nn.Module], *args,
              preserve_rng_state: bool = False):
    """``fn(*args)`` whose intermediate tensors are recomputed in the
    backward instead of stored (BatchNorm statistics of ``modules`` updated
    once)."""
    if _compiling():  # traced: see the module docstring
        return checkpoint(fn, *args, use_reentrant=False,
                          preserve_rng_state=preserve_rng_state)
    return checkpoint(
        fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
        context_fn=lambda: (contextlib.nullcontext(),
                            KeepRunningStats(modules)))


class Recompute:
    """Mixin of the two blocks; they set ``with_cp`` and ``selective_cp`` in
    their constructor."""
    with_cp: bool
    selective_cp: bool

    def _maybe_checkpoint(self, fn: Callable, x: torch.Tensor, *args):
        """``fn(x, *args)``, recomputed as a whole with ``with_cp``."""
        if self.with_cp and self.training and x.requires_grad:
            # DropPath is inside: replay its random draws
            return recompute(fn, [self], x, *args, preserve_rng_state=True)
        return fn(x, *args)

    def _cheap(self, modules: Sequence[nn.Module], *args, fn=None):
        """A cheap segment: ``modules`` in sequence on ``args[0]`` (or
        ``fn(*args)`` using ``modules``). While training with
        ``selective_cp`` (and not ``with_cp``), its outputs are recomputed in
        the backward rather than kept."""
        if fn is None:
            fn = functools.partial(chain, modules)
        if self.selective_cp and not self.with_cp and self.training and \
                torch.is_grad_enabled():
            return recompute(fn, modules, *args)
        return fn(*args)
