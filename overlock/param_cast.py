"""One cast of a block's convolution parameters under autocast (training).

Under autocast every convolution casts its float32 weight and bias to the
half dtype: on a GPU each cast is a kernel launch, and so is the cast of
each gradient back to float32 in the backward. A recomputed segment
(:mod:`overlock.recompute`) runs after autocast's cast cache is gone, so
its convolutions cast their parameters a second time. In an OverLoCK-T
training step under fp16 autocast these casts were 2,336 of 8,416
operations (the path CUDA takes, 128x128).

:func:`cast_block_params` makes the half copies of a block's convolution
parameters with one concatenation and one cast, and lends the block's
modules views of them for the block's forward (the module's
``_parameters`` entry, so that every reader, ``nn.Conv2d.forward``
included, sees the half tensor); a recomputed segment lends the same views
again for its backward. In the backward the gradients of a block's
parameters come back through one cast and one concatenation. The numbers
are those of autocast, which casts these parameters exactly so: a float32
value rounded once to the half dtype, and each half gradient rounded once
to float32. A :class:`~overlock.layers.ResDWConv`, whose forward reads
``fused_weight()``, is cast as its fused kernel (the identity added in
float32 first, as before): the instance's ``fused_weight`` returns the
half copy while it is lent.

Only plain eager training under autocast takes it: not under
``torch.compile`` (inductor fuses the casts), nor in the reference mode.
Parameters that are not float32 leaves requiring grad are left alone, and
so are the modules a block names in ``raw_param_modules`` (read as
tensors, not called: ``weight_proj``, whose weight enters the float32
ContMix logits).
"""
import threading
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import settings
from .layers import HALF_DTYPES
from .reparam import exporting, submodules

__all__ = ['ParamCast', 'cast_block_params', 'active', 'lent']

#: ``(module, name, half tensor, fused)``
Entry = Tuple[nn.Module, str, torch.Tensor, bool]


class ParamCast:
    """Half copies of some modules' parameters, lent to the modules by
    :class:`lent`."""
    __slots__ = ('entries',)

    def __init__(self, entries: Sequence[Entry]):
        self.entries = list(entries)

    def tensors(self) -> List[torch.Tensor]:
        """The half copies."""
        return [e[2] for e in self.entries]


class _Returns:
    """A ``fused_weight`` method returning the lent half copy."""
    __slots__ = ('tensor',)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __call__(self) -> torch.Tensor:
        return self.tensor


class _State(threading.local):
    active: Optional[ParamCast] = None


_state = _State()


def active() -> Optional[ParamCast]:
    """The :class:`ParamCast` lent in this thread now, if any."""
    return _state.active


class lent:  # noqa: N801 (a context manager, named as one)
    """Inside, ``cast``'s modules read their half copies (``None``: a no-op
    context). A class, not a generator context: two Python calls per use,
    once per block and per recomputed segment."""
    __slots__ = ('cast', 'saved', 'before')

    def __init__(self, cast: Optional[ParamCast]):
        self.cast = cast

    def __enter__(self):
        cast = self.cast
        if cast is None:
            return
        saved = []
        for module, name, tensor, fused in cast.entries:
            saved.append(module._parameters[name])
            module._parameters[name] = tensor
            if fused:  # found before the class's method
                module.__dict__['fused_weight'] = _Returns(tensor)
        self.saved = saved
        self.before, _state.active = _state.active, cast

    def __exit__(self, *exc):
        cast = self.cast
        if cast is None:
            return
        for (module, name, _, fused), param in zip(cast.entries,
                                                   self.saved):
            module._parameters[name] = param
            if fused:
                module.__dict__.pop('fused_weight', None)
        self.saved = None
        _state.active = self.before


def _applies(x: torch.Tensor) -> Optional[torch.dtype]:
    """Autocast's half dtype if a block run on ``x`` now takes the one
    cast, else None."""
    if not torch.is_grad_enabled() or x.dtype == torch.float64:
        return None
    device = x.device.type
    if not torch.is_autocast_enabled(device) or settings.reference or \
            exporting():
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if dtype in HALF_DTYPES else None


def _castable(block: nn.Module) -> List[Tuple[nn.Module, str, bool]]:
    """``(module, name, fused)`` of the parameters autocast would cast in
    ``block``'s convolutions."""
    skip = getattr(block, 'raw_param_modules', ())
    skip = {id(m) for name in skip for m in submodules(block._modules[name])}
    found = []
    for m in submodules(block):
        if not isinstance(m, nn.Conv2d) or id(m) in skip:
            continue
        params = m._parameters
        # (a ResDWConv: its forward reads fused_weight())
        fused = getattr(type(m), 'fused_weight', None) is not None
        for name in ('weight', 'bias'):
            p = params.get(name)
            # (a parameter of a tensor subclass, e.g. a fake tensor, is
            # an instance but not of the type; isinstance is a Python call)
            if p is not None and p.is_leaf and p.requires_grad and \
                    p.dtype == torch.float32 and \
                    (type(p) is nn.Parameter or isinstance(p, nn.Parameter)):
                found.append((m, name, fused and name == 'weight'))
    return found


def cast_block_params(block: nn.Module,
                      x: torch.Tensor) -> Optional[ParamCast]:
    """The half copies of ``block``'s convolution parameters, for a forward
    on ``x`` now (None where autocast would not cast them, see the module
    docstring): one concatenation and one cast, then views."""
    dtype = _applies(x)
    if dtype is None:
        return None
    found = _castable(block)
    if not found:
        return None
    tensors = [m.fused_weight() if fused else m._parameters[name]
               for m, name, fused in found]
    halves = _FlatCast.apply(dtype, *tensors)
    return ParamCast([(m, name, half, fused) for (m, name, fused), half
                      in zip(found, halves)])


class _FlatCast(torch.autograd.Function):
    """``[t.to(dtype) for t in tensors]`` as one concatenation and one
    cast, the copies views of the result, and so the backward. On a GPU:
    two kernels each way for a block (a concatenation of tensors of
    different dtypes would copy them one by one); the views are made
    without autograd tracking each."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.dtype = tensors[0].dtype
        return _flat_cast(tensors, dtype)

    @staticmethod
    def backward(ctx, *grads):
        # (autograd passes zeros for the copies a step did not use)
        return (None, *_flat_cast(grads, ctx.dtype))


def _flat_cast(tensors: Sequence[torch.Tensor],
               dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(dtype)
    parts = flat.split_with_sizes([t.numel() for t in tensors])
    # (a list: each step of a generator is a Python call)
    return tuple([part.view(t.shape) for part, t in zip(parts, tensors)])
