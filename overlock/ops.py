"""Operators of OverLoCK with optional CUDA accelerators.

Two operators dominate OverLoCK's cost:

* the *ContMix aggregation*: every pixel mixes the values of its ``K x K``
  neighbourhood with its own (dynamic) weights, with NATTEN's ``na2d_av``
  semantics: the window of a pixel near a border is shifted so that it stays
  inside the map (it is never zero padded);
* the *large-kernel depthwise convolutions* (kernels 7 to 17).

Both have a pure PyTorch implementation that runs on any device and gives the
same numbers as the accelerators. The accelerators are imported lazily, on the
first CUDA call, and only used when present:

* ``natten`` 0.17.x provides ``natten.functional.na2d_av``; natten >= 0.20
  removed it and is recognised and skipped with one log line;
* ``depthwise_conv2d_implicit_gemm`` (from UniRepLKNet / RepLKNet) provides
  implicit-GEMM depthwise convolutions.

:func:`set_accelerators` (or the environment variables
``OVERLOCK_DISABLE_NATTEN=1`` / ``OVERLOCK_DISABLE_IGEMM=1``) forces the PyTorch
path.
"""
import functools
import logging
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

__all__ = [
    'contmix_aggregate', 'contmix_aggregate_reference', 'neighborhood_starts',
    'neighborhood_bias_index', 'LargeKernelDWConv2d', 'set_accelerators',
    'accelerator_status', 'set_reference_mode', 'depthwise_conv2d',
    'DWConv2d', 'set_cpu_conv_mode', 'conv_act', 'spatial_l2_norm', 'bn_affine',
    'aggregate_into', 'aggregate_window_major', 'set_contmix_mode',
    'reference_mode'
]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, '').strip().lower() in ('1', 'true', 'yes', 'on')


# ``None`` = not looked up yet, ``False`` = unavailable, otherwise the callable.
_natten_av = None
_igemm_mod = None
_use_natten = not _env_flag('OVERLOCK_DISABLE_NATTEN')
_use_igemm = not _env_flag('OVERLOCK_DISABLE_IGEMM')
_reference_mode = False


def set_accelerators(natten: Optional[bool] = None,
                     igemm: Optional[bool] = None) -> None:
    """Allow or forbid the optional CUDA accelerators.

    Args:
        natten (bool, optional): Use ``natten.functional.na2d_av`` for the
            ContMix aggregation of CUDA tensors when natten 0.17.x is
            installed. ``None`` leaves the setting unchanged.
        igemm (bool, optional): Use ``depthwise_conv2d_implicit_gemm`` for the
            large-kernel depthwise convolutions of CUDA tensors when it is
            installed. ``None`` leaves the setting unchanged.
    """
    global _use_natten, _use_igemm
    if natten is not None:
        _use_natten = bool(natten)
    if igemm is not None:
        _use_igemm = bool(igemm)


def set_reference_mode(enabled: bool) -> None:
    """Run the ContMix aggregation the naive way (autograd through a gathered
    ``(K*K, C)`` tensor per pixel, as the official fallback does). Only for
    benchmarks and tests: slower and far more memory-hungry. The model then
    also runs every layer as the official code does (no fused inference, no
    merged kernels before :meth:`OverLoCK.reparameterize`, element-wise
    residuals)."""
    global _reference_mode
    _reference_mode = bool(enabled)


def reference_mode() -> bool:
    """Whether :func:`set_reference_mode` is on."""
    return _reference_mode


def _load_natten():
    global _natten_av
    if _natten_av is None:
        try:
            import natten
            from natten import functional as natten_functional
        except ImportError:
            _natten_av = False
            logger.info('natten is not installed: ContMix aggregation uses '
                        'the PyTorch implementation.')
            return _natten_av
        fn = getattr(natten_functional, 'na2d_av', None)
        if fn is None:
            _natten_av = False
            logger.info(
                'natten %s has no na2d_av (removed in natten 0.20); ContMix '
                'aggregation uses the PyTorch implementation. Install '
                'natten 0.17.x to use its CUDA kernels.',
                getattr(natten, '__version__', '?'))
        else:
            _natten_av = fn
            logger.info('ContMix aggregation uses natten %s na2d_av on CUDA.',
                        getattr(natten, '__version__', '?'))
    return _natten_av


def _load_igemm():
    global _igemm_mod
    if _igemm_mod is None:
        try:
            import depthwise_conv2d_implicit_gemm as mod
            fp32 = getattr(mod, '_DepthWiseConv2dImplicitGEMMFP32')
            fp16 = getattr(mod, '_DepthWiseConv2dImplicitGEMMFP16')
        except (ImportError, AttributeError):
            _igemm_mod = False
            logger.info('depthwise_conv2d_implicit_gemm is not available: '
                        'large-kernel depthwise convolutions use '
                        'torch.nn.functional.conv2d.')
        else:
            _igemm_mod = (fp32, fp16)
            logger.info('large-kernel depthwise convolutions use '
                        'depthwise_conv2d_implicit_gemm on CUDA.')
    return _igemm_mod


def accelerator_status() -> dict:
    """Which accelerators are installed and allowed (imports them)."""
    return dict(
        natten=bool(_load_natten()) and _use_natten,
        igemm=bool(_load_igemm()) and _use_igemm)


# --------------------------------------------------------------------------
# Neighbourhood geometry (NATTEN semantics, dilation 1)
# --------------------------------------------------------------------------
def neighborhood_starts(length: int, kernel_size: int,
                        device=None) -> torch.Tensor:
    """First index of each position's window along one axis.

    The window is centred on the position and shifted inwards near the
    borders: ``clamp(i - K // 2, 0, length - K)``.
    """
    if length < kernel_size:
        raise ValueError(f'ContMix aggregation needs a map at least as large '
                         f'as its kernel ({kernel_size}), got {length}')
    idx = torch.arange(length, device=device)
    return (idx - kernel_size // 2).clamp_(0, length - kernel_size)


def _bias_starts(length: int, kernel_size: int, device=None) -> torch.Tensor:
    # Row of the (2K-1)-sized relative position table that the first window
    # element of each position uses: K//2 for interior positions, larger near
    # the start and smaller near the end (NATTEN's ``get_pb_start``).
    half = kernel_size // 2
    idx = torch.arange(length, device=device)
    return half + (half - idx).clamp(min=0) + (length - 1 - half - idx).clamp(
        max=0)


def neighborhood_bias_index(height: int, width: int, kernel_size: int,
                            device=None) -> torch.Tensor:
    """Index into a flattened ``(2K-1, 2K-1)`` relative-position table.

    Returns a ``(height * width, K * K)`` long tensor: entry ``[p, k]`` is the
    table entry that pixel ``p`` (row-major) adds to its ``k``-th neighbour.
    """
    size = 2 * kernel_size - 1
    offs = torch.arange(kernel_size, device=device)
    rows = _bias_starts(height, kernel_size, device)[:, None] + offs  # H, K
    cols = _bias_starts(width, kernel_size, device)[:, None] + offs  # W, K
    idx = rows[:, None, :, None] * size + cols[None, :, None, :]  # H W K K
    return idx.reshape(height * width, kernel_size * kernel_size)


# --------------------------------------------------------------------------
# ContMix aggregation
# --------------------------------------------------------------------------
def _column_segments(width: int, kernel_size: int, kj: int):
    """``(destination columns, source columns)`` of window column ``kj``.

    Interior pixels read a shifted slice of columns; the ``K // 2`` pixels at
    either border share one window start and read one column (broadcast), so
    no gather is needed along the width.
    """
    half, n = kernel_size // 2, width - kernel_size + 1
    edge = width - kernel_size + kj
    segs = [(slice(half, half + n), slice(kj, kj + n))]
    if half:
        segs.append((slice(0, half), slice(kj, kj + 1)))
        segs.append((slice(half + n, width), slice(edge, edge + 1)))
    return segs


def aggregate_into(attn_t: torch.Tensor, value: torch.Tensor,
                   kernel_size: int, out: torch.Tensor) -> torch.Tensor:
    """``out += aggregation`` (no autograd); ``attn_t`` is window-major,
    ``(K*K, B, G, H, W)``, ``value`` and ``out`` are ``(B, G, H, W, C)``.
    Any strides (for example views of a channels-last feature map)."""
    height, width = value.shape[2:4]
    rows = neighborhood_starts(height, kernel_size, value.device)
    segs = [_column_segments(width, kernel_size, kj)
            for kj in range(kernel_size)]
    for ki in range(kernel_size):
        v_rows = value.index_select(2, rows + ki)
        for kj in range(kernel_size):
            a = attn_t[ki * kernel_size + kj].unsqueeze(-1)
            for dst, src in segs[kj]:
                out[:, :, :, dst].addcmul_(v_rows[:, :, :, src],
                                           a[:, :, :, dst])
    return out


# The aggregation has two CPU implementations, chosen per shape by timing
# both once (``_use_band``):
#
# * *slices*: ``K * K`` fused multiply-adds of shifted slices (above); few
#   flops, many passes over the output, best for maps much wider than K;
# * *band*: for each window row, every image row is one small matrix product
#   ``out_row (W, C) += A (W, W') @ value_row (W', C)`` with the pixels'
#   weights scattered into a banded ``A`` (W' = the columns the row's windows
#   cover; wide maps are split into column blocks); more flops but all in
#   GEMMs, 2-6x faster at training sizes. ``A`` has no channel axis.
_BAND_BLOCK = 32
_agg_cache: dict = {}
_agg_mode = os.environ.get('OVERLOCK_CONTMIX', 'auto').strip().lower()


def set_contmix_mode(mode: str) -> None:
    """How the PyTorch ContMix aggregation runs: ``'auto'`` (default: the
    faster of the two for each shape, timed once on CPU), ``'band'`` or
    ``'slices'``. Also set by ``OVERLOCK_CONTMIX``."""
    global _agg_mode
    if mode not in ('auto', 'band', 'slices'):
        raise ValueError(f"mode must be 'auto', 'band' or 'slices', got "
                         f'{mode!r}')
    _agg_mode = mode


def aggregate_window_major(attn: torch.Tensor, value: torch.Tensor,
                           kernel_size: int,
                           out: torch.Tensor) -> torch.Tensor:
    """``out += aggregation`` without autograd, for window-major weights
    ``(B, G, K*K, H, W)`` (any strides); ``value``/``out``: ``(B, G, H, W,
    C)``, ``out`` contiguous."""
    if _use_band(value, kernel_size):
        a6 = attn.permute(0, 1, 3, 4, 2).unflatten(4, (kernel_size,) * 2)
        return _band_forward(a6, value, kernel_size, out)
    return aggregate_into(attn.permute(2, 0, 1, 3, 4), value, kernel_size, out)


@functools.lru_cache(maxsize=256)
def _band_blocks(width: int, kernel_size: int, device: torch.device):
    """Column blocks: ``(output columns, value columns, local window
    index (wb, K))``."""
    starts = neighborhood_starts(width, kernel_size)
    block = width if width <= 48 else _BAND_BLOCK
    blocks = []
    for j0 in range(0, width, block):
        j1 = min(width, j0 + block)
        c0, c1 = int(starts[j0]), int(starts[j1 - 1]) + kernel_size
        idx = starts[j0:j1, None] - c0 + torch.arange(kernel_size)
        blocks.append((slice(j0, j1), slice(c0, c1), idx.to(device)))
    return blocks


def _band(a6, ki, js, idx, width_v):
    b, g, h = a6.shape[:3]
    wb, k = idx.shape
    band = a6.new_zeros(b, g, h, wb, width_v)
    return band.scatter_(-1, idx.expand(b, g, h, wb, k), a6[:, :, :, js, ki])


def _band_forward(a6, value, kernel_size, out):
    """``out += aggregation``; ``a6`` is ``(B, G, H, W, K, K)`` (any
    strides), ``value`` and ``out`` ``(B, G, H, W, C)``."""
    height, width = value.shape[2:4]
    rows = neighborhood_starts(height, kernel_size, value.device)
    blocks = _band_blocks(width, kernel_size, value.device)
    for ki in range(kernel_size):
        v_rows = value.index_select(2, rows + ki)
        for js, cs, idx in blocks:
            band = _band(a6, ki, js, idx, cs.stop - cs.start)
            out[:, :, :, js] += torch.matmul(band, v_rows[:, :, :, cs])
    return out


def _band_backward(a6, value, kernel_size, grad_out, need_attn, need_value):
    height, width = value.shape[2:4]
    rows = neighborhood_starts(height, kernel_size, value.device)
    blocks = _band_blocks(width, kernel_size, value.device)
    grad_attn = a6.new_empty(a6.shape) if need_attn else None
    grad_value = torch.zeros_like(value) if need_value else None
    for ki in range(kernel_size):
        v_rows = value.index_select(2, rows + ki) if need_attn else None
        acc = torch.zeros_like(value) if need_value else None
        for js, cs, idx in blocks:
            go = grad_out[:, :, :, js]
            if need_attn:
                prod = torch.matmul(go, v_rows[:, :, :, cs].transpose(-1, -2))
                grad_attn[:, :, :, js, ki] = prod.gather(
                    -1, idx.expand(*prod.shape[:-1], kernel_size))
            if need_value:
                band = _band(a6, ki, js, idx, cs.stop - cs.start)
                acc[:, :, :, cs] += torch.matmul(band.transpose(-1, -2), go)
        if need_value:
            grad_value.index_add_(2, rows + ki, acc)
    return grad_attn, grad_value


def _use_band(value: torch.Tensor, kernel_size: int) -> bool:
    """Whether the band implementation is the faster one for this shape
    (timed once per shape on CPU; always on other devices)."""
    if _agg_mode != 'auto':
        return _agg_mode == 'band'
    if value.device.type != 'cpu':
        return True
    key = (tuple(value.shape), kernel_size, value.dtype,
           torch.get_num_threads())
    choice = _agg_cache.get(key)
    if choice is None:
        with torch.no_grad():
            v = value.detach().contiguous()
            k2 = kernel_size * kernel_size
            attn = torch.full((*v.shape[:4], k2), 1. / k2, dtype=v.dtype)
            a6 = attn.view(*v.shape[:4], kernel_size, kernel_size)
            attn_t = attn.permute(4, 0, 1, 2, 3).contiguous()
            out = torch.zeros_like(v)
            t_band = _time_once(lambda: _band_forward(a6, v, kernel_size, out))
            t_slices = _time_once(
                lambda: aggregate_into(attn_t, v, kernel_size, out))
        choice = _agg_cache[key] = t_band < t_slices
        logger.debug('ContMix aggregation %s K=%d: band %.2f ms, slices '
                     '%.2f ms', key[0], kernel_size, t_band * 1e3,
                     t_slices * 1e3)
    return choice


class _ContMixAggregate(torch.autograd.Function):
    """``out[b,g,i,j] = sum_k attn[b,g,i,j,k] * value[b,g,n_k(i,j)]``.

    Runs the *band* or the *slices* implementation (see above), whichever
    is faster for the shape. Neither direction ever holds a tensor with both
    the window and the channel axes: memory is ``O(B * H * W * (C + K * K))``.
    The backward recomputes the gathers instead of saving them.
    """

    @staticmethod
    def forward(ctx, attn, value, kernel_size):
        out = torch.zeros_like(value, memory_format=torch.contiguous_format)
        ctx.band = _use_band(value, kernel_size)
        if ctx.band:
            a6 = attn.reshape(*attn.shape[:4], kernel_size, kernel_size)
            _band_forward(a6, value, kernel_size, out)
            ctx.save_for_backward(a6, value)
        else:
            attn_t = attn.permute(4, 0, 1, 2, 3).contiguous()  # K*K,B,G,H,W
            aggregate_into(attn_t, value, kernel_size, out)
            ctx.save_for_backward(attn_t, value)
        ctx.kernel_size = kernel_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        attn_t, value = ctx.saved_tensors
        kernel_size = ctx.kernel_size
        _, _, height, width, _ = value.shape
        grad_out = grad_out.contiguous()
        need_attn, need_value = ctx.needs_input_grad[:2]
        if ctx.band:
            grad_attn, grad_value = _band_backward(
                attn_t, value, kernel_size, grad_out, need_attn, need_value)
            if need_attn:
                grad_attn = grad_attn.flatten(4)
            return grad_attn, grad_value, None
        rows = neighborhood_starts(height, kernel_size, value.device)
        grad_attn = torch.empty_like(attn_t) if need_attn else None
        grad_value = torch.zeros_like(value) if need_value else None
        segs = [_column_segments(width, kernel_size, kj)
                for kj in range(kernel_size)]
        for ki in range(kernel_size):
            v_rows = value.index_select(2, rows + ki) if need_attn else None
            acc = torch.zeros_like(grad_out) if need_value else None
            for kj in range(kernel_size):
                k = ki * kernel_size + kj
                a = attn_t[k].unsqueeze(-1)
                for n, (dst, src) in enumerate(segs[kj]):
                    go = grad_out[:, :, :, dst]
                    if need_attn:
                        torch.sum(v_rows[:, :, :, src] * go, dim=-1,
                                  out=grad_attn[k][:, :, :, dst])
                    if need_value:
                        contrib = go * a[:, :, :, dst]
                        if n:  # a border: all its pixels read one column
                            contrib = contrib.sum(3, keepdim=True)
                        acc[:, :, :, src] += contrib
            if need_value:
                grad_value.index_add_(2, rows + ki, acc)
        if need_attn:
            grad_attn = grad_attn.permute(1, 2, 3, 4, 0)
        return grad_attn, grad_value, None


def _check_aggregate_args(attn, value, kernel_size):
    if attn.dim() != 5 or value.dim() != 5:
        raise ValueError('contmix_aggregate expects attn (B, G, H, W, K*K) and '
                         f'value (B, G, H, W, C), got {tuple(attn.shape)} and '
                         f'{tuple(value.shape)}')
    if attn.shape[:4] != value.shape[:4] or \
            attn.shape[-1] != kernel_size * kernel_size:
        raise ValueError(
            f'attn {tuple(attn.shape)} does not match value '
            f'{tuple(value.shape)} with kernel_size {kernel_size}')
    if min(value.shape[2:4]) < kernel_size:
        raise ValueError(
            f'ContMix aggregation needs maps of at least {kernel_size} x '
            f'{kernel_size}, got {tuple(value.shape[2:4])}')


def contmix_aggregate(attn: torch.Tensor, value: torch.Tensor,
                      kernel_size: int) -> torch.Tensor:
    """Neighbourhood aggregation with NATTEN's ``na2d_av`` semantics.

    Args:
        attn (Tensor): ``(B, G, H, W, K*K)`` weights of each pixel's window,
            row-major over the window.
        value (Tensor): ``(B, G, H, W, C)`` values.
        kernel_size (int): ``K``, odd, at most ``min(H, W)``.

    Returns:
        Tensor: ``(B, G, H, W, C)``.
    """
    _check_aggregate_args(attn, value, kernel_size)
    if _reference_mode:
        return contmix_aggregate_reference(attn, value, kernel_size)
    if value.is_cuda and _use_natten:
        fn = _load_natten()
        if fn:
            return fn(attn, value, kernel_size=kernel_size)
    if attn.dtype != value.dtype:
        attn = attn.to(value.dtype)
    return _ContMixAggregate.apply(attn, value, kernel_size)


def contmix_aggregate_reference(attn: torch.Tensor, value: torch.Tensor,
                                kernel_size: int) -> torch.Tensor:
    """Straightforward autograd version (gathers all ``K*K`` neighbours).

    Memory ``O(B * H * W * C * K * K)``: used by the tests and as the naive
    baseline of the benchmark, not by the model.
    """
    _check_aggregate_args(attn, value, kernel_size)
    _, _, height, width, _ = value.shape
    offs = torch.arange(kernel_size, device=value.device)
    rows = neighborhood_starts(height, kernel_size, value.device)[:, None] + offs
    cols = neighborhood_starts(width, kernel_size, value.device)[:, None] + offs
    v = value[:, :, rows[:, None, :, None], cols[None, :, None, :]]
    v = v.flatten(4, 5)  # B G H W K*K C
    return (attn.unsqueeze(-1) * v).sum(4)


# --------------------------------------------------------------------------
# Depthwise convolutions on CPU
# --------------------------------------------------------------------------
#: ``auto``: time both layouts once per shape and keep the faster forward;
#: ``cf`` / ``cl``: always channels-first / channels-last; ``aten``: plain
#: ``F.conv2d`` with PyTorch's own backward (the baseline).
_cpu_conv_mode = os.environ.get('OVERLOCK_CPU_CONV', 'auto').strip().lower()
_layout_cache: dict = {}


def set_cpu_conv_mode(mode: str) -> None:
    """How depthwise convolutions run on CPU: ``'auto'`` (default),
    ``'cf'``, ``'cl'`` or ``'aten'`` (see :func:`depthwise_conv2d`)."""
    global _cpu_conv_mode
    if mode not in ('auto', 'cf', 'cl', 'aten'):
        raise ValueError(f"mode must be 'auto', 'cf', 'cl' or 'aten', got "
                         f'{mode!r}')
    _cpu_conv_mode = mode


def _time_once(fn, repeats=2):
    import time
    fn()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _is_channels_last(x) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)


def _conv_plan(x, weight, padding, dilation):
    """The fastest way to run this depthwise convolution forward on CPU:
    ``(channels_last, dense)``, timed once per shape. ``dense`` (dilated
    kernels only) runs the kernel with its zeros inserted as an undilated
    one: oneDNN's dilated depthwise path is slow for some shapes (9x9,
    dilation 2, 64 channels at 128x128: 29 ms dilated, 6 ms dense)."""
    if _cpu_conv_mode in ('cf', 'cl'):
        return _cpu_conv_mode == 'cl', False
    key = (tuple(x.shape), _is_channels_last(x), tuple(weight.shape),
           padding, dilation, x.dtype, torch.get_num_threads())
    choice = _layout_cache.get(key)
    if choice is None:
        plans = [(False, False), (True, False)]
        if dilation > 1:
            plans += [(False, True), (True, True)]
        with torch.no_grad():
            xd, w = x.detach(), weight.detach()
            times = [_time_once(functools.partial(
                _conv_forward, xd, w, None, padding, dilation, plan))
                for plan in plans]
        choice = _layout_cache[key] = plans[times.index(min(times))]
        logger.debug('depthwise conv %s k%s d%s: %s', key[0], key[2][-1],
                     dilation, ', '.join(
                         f'{"cl" if cl else "cf"}{" dense" if d else ""} '
                         f'{t * 1e3:.2f} ms'
                         for (cl, d), t in zip(plans, times)))
    return choice


def _conv_forward(x, weight, bias, padding, dilation, plan):
    """Convolve with ``plan = (channels_last, dense)``; the output keeps the
    input's layout."""
    channels_last, dense = plan
    if dense and dilation > 1:
        weight, dilation = dilate_kernel(weight, dilation), 1
    groups = weight.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out_fmt = torch.channels_last if _is_channels_last(x) else \
        torch.contiguous_format
    y = F.conv2d(x.contiguous(memory_format=fmt), weight, bias, 1, padding,
                 dilation, groups)
    return y.contiguous(memory_format=out_fmt)


def _weight_grad(x, grad_out, kernel_size, padding, dilation):
    """Depthwise weight gradient as a grouped convolution of the padded input
    with the output gradient (channels as groups, batch as input channels):
    ``dW[c, i, j] = sum_{b,h,w} x_pad[b, c, h + i*d, w + j*d] * gy[b, c, h, w]``.
    oneDNN's own depthwise weight-gradient kernel is 10-20x slower for large
    kernels (tools/analysis/bench_dwconv.py)."""
    b, c, h, w = grad_out.shape
    kernel = grad_out.transpose(0, 1)  # C, B, H, W
    if kernel_size * dilation <= 3:
        # small kernels: zero padding inside the convolution (no padded copy
        # of x; 52 -> 12 ms for 3x3, 256 ch at 128x128); for large ones
        # oneDNN is 7-10x faster on an explicitly padded input
        inp = x.transpose(0, 1).reshape(1, c * b, h, w)
        out = F.conv2d(inp, kernel, None, dilation, padding, 1, c)
    else:
        xp = F.pad(x, [padding, padding, padding, padding])
        inp = xp.transpose(0, 1).reshape(1, c * b, xp.shape[2], xp.shape[3])
        out = F.conv2d(inp, kernel, None, dilation, 0, 1, c)
    return out.view(c, 1, kernel_size, kernel_size)


class _DepthwiseConvCPU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        plan = _conv_plan(x, weight, padding, dilation)
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
        return _conv_forward(x, weight, bias, padding, dilation, plan)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, dilation, has_bias = ctx.conf
        grad_out = grad_out.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            # stride 1, symmetric padding: the input gradient is the
            # correlation of grad_out with the flipped kernel, i.e. another
            # forward depthwise convolution (in its fastest layout); oneDNN's
            # backward-data kernel is far slower for dilated kernels
            w_flip = weight.flip(-1, -2)
            grad_x = _conv_forward(
                grad_out, w_flip, None, padding, dilation,
                _conv_plan(grad_out, w_flip, padding, dilation))
        if need_w:
            grad_w = _weight_grad(x.contiguous(), grad_out, weight.shape[-1],
                                  padding, dilation)
        if need_b and has_bias:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def depthwise_conv2d(x: torch.Tensor,
                     weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None,
                     padding: int = 0,
                     dilation: int = 1) -> torch.Tensor:
    """Stride-1 depthwise convolution, fast on CPU.

    Equal to ``F.conv2d(x, weight, bias, 1, padding, dilation, C)`` (to float
    rounding). On CPU the forward runs in the faster memory layout for the
    shape (timed once per shape), and the backward computes the weight
    gradient as a grouped convolution, much faster than oneDNN's depthwise
    weight-gradient kernel for large kernels. Other devices, and
    ``set_cpu_conv_mode('aten')``, use ``F.conv2d`` as it is.
    """
    if x.is_cuda or _cpu_conv_mode == 'aten' or _reference_mode or \
            x.dtype not in (torch.float32, torch.float64) or x.dim() != 4:
        return F.conv2d(x, weight, bias, 1, padding, dilation,
                        weight.shape[0])
    if not (x.requires_grad or weight.requires_grad or
            (bias is not None and bias.requires_grad)) or \
            not torch.is_grad_enabled():
        return _conv_forward(
            x, weight, bias, padding, dilation,
            _conv_plan(x, weight, padding, dilation))
    return _DepthwiseConvCPU.apply(x, weight, bias, padding, dilation)


# --------------------------------------------------------------------------
# Large-kernel depthwise convolution
# --------------------------------------------------------------------------
class LargeKernelDWConv2d(nn.Conv2d):
    """Depthwise ``K x K`` convolution, stride 1, "same" padding.

    A plain :class:`torch.nn.Conv2d` (same parameters, same state_dict keys)
    whose forward uses ``depthwise_conv2d_implicit_gemm`` for CUDA tensors when
    that package is installed and allowed, and :func:`depthwise_conv2d` on
    CPU.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=1,
            padding=kernel_size // 2,
            groups=channels,
            bias=bias)

    def _conv(self, x, weight, bias):
        if x.is_cuda and _use_igemm:
            impl = _load_igemm()
            if impl:
                fn = impl[1] if x.dtype == torch.float16 else impl[0]
                out = fn.apply(x.contiguous(), weight)
                if bias is not None:
                    out = out + bias.view(1, -1, 1, 1).to(out.dtype)
                return out
        return depthwise_conv2d(x, weight, bias, self.padding[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight, self.bias)


class DWConv2d(nn.Conv2d):
    """Stride-1 depthwise convolution with "same" padding and optional
    dilation, running through :func:`depthwise_conv2d`. Same parameters as
    :class:`torch.nn.Conv2d`."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True):
        super().__init__(channels, channels, kernel_size, 1,
                         dilation * (kernel_size - 1) // 2, dilation, channels,
                         bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.padding[0],
                                self.dilation[0])


def fuse_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
                 bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding convolution."""
    scale, shift = bn_affine(bn)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.view(-1, 1, 1, 1), b * scale + shift


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(x) = x * scale + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel equal to ``weight`` applied with ``dilation``."""
    if dilation == 1:
        return weight
    c, g, k, _ = weight.shape
    size = dilation * (k - 1) + 1
    out = weight.new_zeros(c, g, size, size)
    out[:, :, ::dilation, ::dilation] = weight
    return out


# --------------------------------------------------------------------------
# Inference helpers (no autograd)
# --------------------------------------------------------------------------
_ACTS = {'none': None, 'gelu': F.gelu, 'swish': F.silu, 'sigmoid': torch.sigmoid}


def _mkldnn_pointwise_ok(x: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and not _reference_mode and _cpu_conv_mode != 'aten'
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
        fmt = torch.channels_last if _is_channels_last(x) else \
            torch.contiguous_format
        if add.is_contiguous(memory_format=fmt):
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, add, weight, bias, pad, [1, 1], [1, 1], groups, 'add',
                None, None, [], None)
    y = F.conv2d(x, weight, bias, 1, padding, 1, groups)
    if add is not None:
        return y.add_(add)
    fn = _ACTS[act]
    return fn(y) if fn is not None else y


def spatial_l2_norm(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """L2 norm over ``(H, W)`` of an ``(N, C, H, W)`` tensor, shape
    ``(N, C, 1, 1)``, without materialising ``x * x`` (on CPU a fresh
    allocation of the size of ``x`` costs more than the arithmetic):
    channels-first tensors reduce along their contiguous rows (3-4x faster
    than ``vector_norm`` on CPU), channels-last ones in cache-sized chunks of
    pixels (when no gradient is needed)."""
    n, c = x.shape[:2]
    if x.is_contiguous():
        return x.reshape(n, c, -1).norm(dim=2)[..., None, None]
    if not _is_channels_last(x) or (torch.is_grad_enabled()
                                    and x.requires_grad):
        return x.square().sum((2, 3), keepdim=True).sqrt()
    rows = x.permute(0, 2, 3, 1).reshape(n, -1, c)
    out = x.new_zeros(n, c)
    for i in range(n):
        for part in rows[i].split(chunk):
            out[i] += part.square().sum(0)
    return out.sqrt_()[..., None, None]
