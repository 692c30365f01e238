"""When to skip a custom op's dispatch and call its implementation.

The Triton-backed operators (the ContMix aggregation, the Triton
depthwise convolution) are ``torch.library`` custom ops, so that autograd,
fake tensors, the FLOP counter and ``torch.compile`` see one operator. A
custom op pays for that in host time on every call: its Python layers
(schema binding, the autograd wrapper, the dispatcher's Python kernels)
cost ~20-60 µs per call on a 2-core CPU (docs/performance.md), ~0.3 ms in an
H100 profile. A GPU training step of OverLoCK is host-bound, so in plain
eager execution the same implementations are called directly (or through
an ``autograd.Function``): :func:`direct` says when. Compilation, dispatch
modes (``FakeTensorMode``, ``FlopCounterMode``, ...), functorch
transforms and tensor subclasses keep the custom op.

:func:`needs_grad` also picks between a layer's training path and its
inference one (GRN's one-pass formula), whose rounding may differ; inside
:func:`as_if_recorded` it answers as if grad mode were on.
"""
import threading

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['direct', 'needs_grad', 'as_if_recorded', 'HALF_DTYPES']

#: half-precision dtypes (autocast's)
HALF_DTYPES = (torch.float16, torch.bfloat16)

_PLAIN = (torch.Tensor, nn.Parameter)


def direct(*tensors: torch.Tensor) -> bool:
    """Whether to call an operator's implementation rather than its custom
    op: eager execution, no dispatch mode or functorch transform active,
    plain tensors (``None`` entries are ignored)."""
    if torch.compiler.is_compiling() or \
            _get_current_dispatch_mode() is not None or \
            torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


class _Recorded(threading.local):
    on = False


_recorded = _Recorded()


class as_if_recorded:  # noqa: N801 (a context manager, named as one)
    """A no-grad region whose layers take the paths they take when autograd
    records (the forward of a recomputed segment, which must give the bits
    its recomputation in the backward gives). A class, not a
    ``contextlib.contextmanager``: two Python calls per use instead of
    five, once per recomputed segment."""
    __slots__ = ('before',)

    def __enter__(self):
        self.before, _recorded.on = _recorded.on, True

    def __exit__(self, *exc):
        _recorded.on = self.before


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` now: grad mode
    on (or :func:`as_if_recorded`) and one of them requiring grad (``None``
    entries are ignored)."""
    if not torch.is_grad_enabled():
        # traced code never sees the flag (short-circuited)
        if torch.compiler.is_compiling() or not _recorded.on:
            return False
    for t in tensors:  # a loop, not any(<generator>): dynamo traces it as is
        if t is not None and t.requires_grad:
            return True
    return False
