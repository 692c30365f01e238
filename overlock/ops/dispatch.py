"""When to skip a custom op's dispatch and call its implementation.

The Triton-backed operators (the ContMix aggregation, the Triton
depthwise convolution) are ``torch.library`` custom ops, so that autograd,
fake tensors, the FLOP counter and ``torch.compile`` see one operator. A
custom op pays for that in host time on every call: its Python layers
(schema binding, the autograd wrapper, the dispatcher's Python kernels)
cost ~20-60 µs per call on a 2-core CPU (see the README), ~0.3 ms in an
H100 profile. A GPU training step of OverLoCK is host-bound, so in plain
eager execution the same implementations are called directly (or through
an ``autograd.Function``): :func:`direct` says when. Compilation, dispatch
modes (``FakeTensorMode``, ``FlopCounterMode``, ...), functorch
transforms and tensor subclasses keep the custom op.
"""
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['direct', 'needs_grad']

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


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` now: grad mode
    on and one of them requiring grad (``None`` entries are ignored)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a loop, not any(<generator>): dynamo traces it as is
        if t is not None and t.requires_grad:
            return True
    return False
