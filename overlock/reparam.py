"""Re-parameterisation: folding BatchNorms, identities and dilated branches
into convolutions, and the per-module cache of folded weights used in
inference.

Folded weights are used only when :func:`use_folded` allows it: eval mode,
no autograd, the ``fast_inference`` switch on, not the reference mode, and
not while tracing, scripting, exporting or compiling (there the plain layers
run, so a traced graph holds the real parameters, not cached constants).
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .config import settings
from .ops.caching import cache_unless_compiling, outside_inference_mode
from .ops.dwconv import dilate_kernel

__all__ = [
    'bn_affine', 'fuse_conv_bn', 'fold_bn_before', 'with_identity',
    'dilate_kernel', 'exporting', 'use_folded', 'cached', 'submodules'
]


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(x) = x * scale + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fuse_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
                 bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution."""
    scale, shift = bn_affine(bn)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.view(-1, 1, 1, 1), b * scale + shift


def fold_bn_before(conv: nn.Conv2d,
                   bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv(bn(x))`` as one 1x1 convolution (eval-mode BN)."""
    scale, shift = bn_affine(bn)
    w = conv.weight
    bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    return w * scale.view(1, -1, 1, 1), bias + w.flatten(1) @ shift


def _identity_tap(weight: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like a depthwise kernel, 1 in the centre tap."""
    delta = torch.zeros_like(weight)
    delta[:, :, weight.shape[-2] // 2, weight.shape[-1] // 2] = 1
    return delta


@cache_unless_compiling(maxsize=32)
def _centre_tap(shape: Tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    with outside_inference_mode():
        return _identity_tap(torch.empty(shape, dtype=dtype, device=device))


def with_identity(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise kernel with 1 added to its centre tap: ``x + conv(x)`` as
    one convolution (one addition of a cached constant: on a GPU, where a
    training step is launch-bound, one kernel instead of three; while
    tracing, built from the weight, so that the graph follows its dtype and
    device)."""
    if exporting():
        return weight + _identity_tap(weight)
    return weight + _centre_tap(tuple(weight.shape), weight.dtype,
                                weight.device)


def exporting() -> bool:
    """Tracing, scripting, exporting or compiling: keep to the plain layers
    and portable ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and compiler.is_compiling():
        return True
    onnx = getattr(torch, 'onnx', None)
    return bool(onnx is not None and onnx.is_in_onnx_export())


def use_folded(module: nn.Module) -> bool:
    """Whether ``module`` may run on folded, cached weights now."""
    return (settings.fast_inference and not settings.reference
            and not module.training and not torch.is_grad_enabled()
            and not exporting())


def submodules(module: nn.Module) -> List[nn.Module]:
    """``module`` and its descendants, as ``module.modules()`` finds them
    but in one Python call: no generator frame per module and no memo (a
    module shared by two parents is listed twice). Used where every
    forward walks a block: on a GPU the step is launch-bound, and
    ``modules()`` / ``parameters()`` made ~70 % of the Python function
    calls of an eval forward."""
    found, stack = [], [module]
    while stack:
        m = stack.pop()
        found.append(m)
        for child in m._modules.values():
            if child is not None:
                stack.append(child)
    return found


def _state_key(module: nn.Module) -> tuple:
    """Storage, in-place version and dtype of every parameter and buffer
    under ``module``."""
    key = []
    for m in submodules(module):
        for group in (m._parameters, m._buffers):
            for t in group.values():
                if t is not None:
                    key.append((t.data_ptr(), t._version, t.dtype))
    return tuple(key)


def cached(module: nn.Module, build: Callable[[], object]):
    """``build()``, cached on ``module`` until one of its parameters or
    buffers changes (storage, in-place version or dtype)."""
    key = _state_key(module)
    entry = module.__dict__.get('_fused_cache')
    if entry is None or entry[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            entry = (key, build())
        module.__dict__['_fused_cache'] = entry
    return entry[1]
