"""Activation recomputation for training (``with_cp`` and ``selective_cp``).

* ``with_cp``: a whole block is recomputed in the backward (its DropPath
  random draws replayed);
* ``selective_cp``: only the cheap segments of a block (norms, activations,
  depthwise and large-kernel convolutions with their BatchNorms) are; the
  expensive 1x1 convolutions and the ContMix aggregation keep their outputs.

Either way the BatchNorm running statistics of a recomputed segment are put
back after the recomputation, so that each training step updates them once.

In eager mode a cheap segment is one autograd function (:class:`_Segment`)
that keeps only its inputs and, in the backward, runs the segment again and
differentiates it. ``torch.utils.checkpoint`` did the same through hooks on
every tensor the segment saved: ~750 Python calls per segment, two thirds
of the Python calls of an OverLoCK-T training step (118k; 38k without
recomputation; now 62k), which on a GPU, where the step is launch-bound,
are host time. A segment ending in a pointwise convolution (``fc1``,
``fc2``, ``fusion.fc``, ``proj.conv``) differentiates that convolution
directly (``aten.convolution_backward`` on the recomputed input): it runs
once per step, as without recomputation, and its input is not kept.

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
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from . import param_cast
from .layers import chain
from .ops.dispatch import as_if_recorded
from .reparam import submodules

__all__ = ['KeepRunningStats', 'recompute', 'segment', 'Recompute']


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
                # the dicts nn.Module.__setattr__ would write (not its
                # Python: 2 x 274 calls of it per OverLoCK-T step)
                m._buffers['num_batches_tracked'] = None
                m.__dict__['momentum'] = 0.
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
                m.__dict__['momentum'], m._buffers['num_batches_tracked'] = \
                    state
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


def _autocast_state(device: str) -> List[Tuple[str, bool, torch.dtype]]:
    """Autocast's settings for ``device`` (and the CPU), to be restored in
    the backward, which runs without them."""
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
            for d in dict.fromkeys((device, 'cpu'))]


def _autocast(state) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device, enabled, dtype in state:
        stack.enter_context(torch.autocast(device, dtype, enabled))
    return stack


def _pointwise_tail(modules: Sequence[nn.Module]) -> Optional[nn.Conv2d]:
    """The segment's last module if it is a plain ``nn.Conv2d`` whose
    backward :func:`_conv_backward` can run."""
    conv = modules[-1] if modules else None
    if type(conv) is nn.Conv2d and conv.padding_mode == 'zeros' and \
            not isinstance(conv.padding, str):
        return conv
    return None


def _conv_backward(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor,
                   state) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of ``conv(x)`` (as run under autocast ``state``) for
    ``x``, ``conv.weight`` and ``conv.bias``: what autograd's convolution
    and cast nodes compute."""
    weight, bias = conv.weight, conv.bias
    device = x.device.type
    enabled = [dtype for d, on, dtype in state if d == device and on]
    if enabled and x.dtype != torch.float64:  # as autocast casts them
        xc, wc = x.to(enabled[0]), weight.to(enabled[0])
    else:
        xc, wc = x, weight
    mask = [x.requires_grad, weight.requires_grad,
            bias is not None and bias.requires_grad]
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad.to(xc.dtype), xc, wc,
        None if bias is None else [bias.shape[0]], conv.stride,
        conv.padding, conv.dilation, False, [0, 0], conv.groups, mask)
    return (None if gx is None else gx.to(x.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype))


class _Segment(torch.autograd.Function):
    """``conv(head(*args))`` (or ``head(*args)`` when ``conv`` is None)
    keeping only ``args`` for the backward, which recomputes ``head`` and
    differentiates it and ``conv``. The parameters the gradients go to are
    inputs (``params``), so that autograd accumulates them as usual (and
    DistributedDataParallel's hooks see them). Where the block's
    parameters were cast once (``cast``, :mod:`overlock.param_cast`),
    ``params`` has their half copies, which the recomputation reads again
    and whose gradients it returns."""

    @staticmethod
    def forward(ctx, head, conv, modules, cast, n_args, *tensors):
        args = tensors[:n_args]
        ctx.head, ctx.conv, ctx.modules, ctx.cast = head, conv, modules, cast
        ctx.autocast = _autocast_state(args[0].device.type)
        # the parameters themselves: the gradients are matched to them by
        # identity, which saved-tensor hooks (save_on_cpu) do not keep
        ctx.params = tensors[n_args:]
        ctx.save_for_backward(*args)
        # the layers' training paths, as in the backward's recomputation
        # (a no-grad path, e.g. GRN's one-pass formula, may round apart)
        with as_if_recorded():
            out = head(*args)
        return out if conv is None else conv(out)

    @staticmethod
    def backward(ctx, grad):
        # (needs_input_grad: a tensor unpacked by a saved-tensor hook may
        # have lost its requires_grad)
        args = [t.detach().requires_grad_(need) for t, need in
                zip(ctx.saved_tensors, ctx.needs_input_grad[5:])]
        params = ctx.params
        conv = ctx.conv
        with torch.enable_grad(), _autocast(ctx.autocast), \
                KeepRunningStats(ctx.modules), param_cast.lent(ctx.cast):
            out = ctx.head(*args)
            found = {}
            if conv is not None:
                grad, gw, gb = _conv_backward(conv, out, grad, ctx.autocast)
                found[id(conv.weight)] = gw
                if conv.bias is not None:
                    found[id(conv.bias)] = gb
        inputs = [t for t in args if t.requires_grad] + \
            [p for p in params if id(p) not in found]
        if grad is not None and out.requires_grad and inputs:
            found.update(zip(map(id, inputs), torch.autograd.grad(
                out, inputs, grad, allow_unused=True)))
        # (lists: a generator's every step is a Python call)
        return (None, None, None, None, None,
                *[found.get(id(t)) for t in args],
                *[found.get(id(p)) for p in params])


def segment(modules: Sequence[nn.Module], *args: torch.Tensor,
            head: Optional[Callable] = None) -> torch.Tensor:
    """A cheap segment, ``modules`` in sequence on ``args[0]`` (or
    ``head(*args)`` followed by ``modules[-1]``; ``head`` may use the other
    modules), recomputed in the backward (see the module docstring)."""
    conv = _pointwise_tail(modules)
    if head is None:
        head = functools.partial(
            chain, modules[:-1] if conv is not None else modules)
    elif conv is None:  # the last module, differentiated through autograd
        first, last = head, modules[-1]
        head = lambda *a: last(first(*a))  # noqa: E731
    full = head if conv is None else lambda *a: conv(head(*a))
    if _compiling():  # traced: see the module docstring
        return checkpoint(full, *args, use_reentrant=False)
    params = list({id(p): p for m in modules for sub in submodules(m)
                   for p in sub._parameters.values()
                   if p is not None and p.requires_grad}.values())
    if not params and not any(t.requires_grad for t in args):
        return full(*args)
    return _Segment.apply(head, conv, modules, param_cast.active(), len(args),
                          *args, *params)


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


def _with_cast(block: nn.Module, fn: Callable, x: torch.Tensor, *args):
    """``fn(x, *args)`` with ``block``'s convolution parameters cast once
    where autocast would cast them (:mod:`overlock.param_cast`)."""
    cast = param_cast.cast_block_params(block, x)
    if cast is None:  # (no context manager where dynamo traces)
        return fn(x, *args)
    with param_cast.lent(cast):
        return fn(x, *args)


class Recompute:
    """Mixin of the two blocks; they set ``with_cp`` and ``selective_cp`` in
    their constructor."""
    with_cp: bool
    selective_cp: bool

    def _maybe_checkpoint(self, fn: Callable, x: torch.Tensor, *args):
        """``fn(x, *args)``, recomputed as a whole with ``with_cp``; under
        autocast with the block's convolution parameters cast once
        (:mod:`overlock.param_cast`)."""
        if self.with_cp and self.training and x.requires_grad:
            # DropPath is inside: replay its random draws (the cast is
            # inside too: the recomputation makes its own)
            return recompute(functools.partial(_with_cast, self, fn), [self],
                             x, *args, preserve_rng_state=True)
        return _with_cast(self, fn, x, *args)

    def _cheap(self, modules: Sequence[nn.Module], *args, head=None):
        """A cheap segment: ``modules`` in sequence on ``args[0]`` (or
        ``head(*args)`` then the last module, a pointwise convolution; see
        :func:`segment`). While training with ``selective_cp`` (and not
        ``with_cp``), its outputs are recomputed in the backward rather
        than kept."""
        if self.selective_cp and not self.with_cp and self.training and \
                torch.is_grad_enabled():
            return segment(modules, *args, head=head)
        if head is None:
            return chain(modules, args[0])
        return modules[-1](head(*args))
