"""CPU helpers: memory-layout tests, oneDNN convolutions with fused
post-ops (inference only) and a copy-free spatial L2 norm."""
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import settings
from .dispatch import needs_grad

__all__ = ['is_channels_last', 'conv_act', 'spatial_l2_norm',
           'has_half_kernels']


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor stored channels-last (and not also contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=None)
def has_half_kernels(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs ``dtype`` (bfloat16 / float16) convolutions on
    this CPU (bfloat16 needs AVX512-BF16 or AMX, float16 AVX512-FP16 or
    AMX-FP16). Without them ATen runs a grouped convolution group by group
    (``slow_conv2d``: one operation per channel of a depthwise convolution),
    4-70x slower than float32 (measured on a 2-core AVX2 machine)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def layout_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else \
        torch.contiguous_format


_ACTS = {'none': None, 'gelu': F.gelu, 'swish': F.silu, 'sigmoid': torch.sigmoid}


def _mkldnn_pointwise_ok(x: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and not settings.reference and settings.cpu_conv != 'aten'
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def conv_act(x: torch.Tensor,
             weight: torch.Tensor,
             bias: Optional[torch.Tensor] = None,
             padding: int = 0,
             groups: int = 1,
             act: str = 'none',
             add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inference-only stride-1 convolution fused with an activation
    (``'none'``, ``'gelu'``, ``'swish'``, ``'sigmoid'``) or followed by
    ``+ add`` (no activation then).

    On CPU (float32) this is one oneDNN call with a post-op (the output is
    written once instead of two or three times); elsewhere the plain
    PyTorch ops. Must not be used where gradients are needed.
    """
    if act not in _ACTS:
        raise ValueError(f'act must be one of {sorted(_ACTS)}, got {act!r}')
    if add is not None and act != 'none':
        raise ValueError('conv_act: use either act or add, not both')
    pad = [padding, padding]
    if _mkldnn_pointwise_ok(x):
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, pad, [1, 1], [1, 1], groups, act, [], 'none')
        if add.is_contiguous(memory_format=layout_of(x)):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, add, weight, bias, pad, [1, 1], [1, 1], groups, 'add',
                None, None, [], None)
    y = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    if add is not None:
        return y.add_(add)
    fn = _ACTS[act]
    return fn(y) if fn is not None else y


def spatial_l2_norm(x: torch.Tensor,
                    chunk: Optional[int] = 4096) -> torch.Tensor:
    """L2 norm over ``(H, W)`` of an ``(N, C, H, W)`` tensor, shape
    ``(N, C, 1, 1)``, without materialising ``x * x`` (on CPU a fresh
    allocation of the size of ``x`` costs more than the arithmetic):
    channels-first tensors reduce along their contiguous rows (3-4x faster
    than ``vector_norm`` on CPU), channels-last ones in cache-sized chunks of
    pixels (when no gradient is needed and ``chunk`` is not ``None``: a
    training step's few large maps rather take three operations than
    three per chunk). Half-precision inputs (autocast)
    give a float32 norm: their sum of squares over a detection-sized map
    overflows float16, and bfloat16 keeps 8 bits of it."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True,
                                        dtype=torch.float32)
    n, c = x.shape[:2]
    if x.is_contiguous():
        return x.reshape(n, c, -1).norm(dim=2)[..., None, None]
    if chunk is None or not is_channels_last(x) or needs_grad(x):
        return x.square().sum((2, 3), keepdim=True).sqrt()
    rows = x.permute(0, 2, 3, 1).reshape(n, -1, c)
    out = x.new_zeros(n, c)
    for i in range(n):
        for part in rows[i].split(chunk):
            out[i] += part.square().sum(0)
    return out.sqrt_()[..., None, None]
