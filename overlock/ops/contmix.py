"""The ContMix aggregation: every pixel mixes the values of its ``K x K``
neighbourhood with its own (dynamic) weights, with NATTEN's ``na2d_av``
semantics: the window of a pixel near a border is shifted so that it stays
inside the map (it is never zero padded).

One dispatch point, :func:`contmix_aggregate`:

* the reference mode: :func:`contmix_aggregate_reference` (autograd through a
  gathered ``(K*K, C)`` tensor per pixel, as the official fallback does);
* CUDA with natten 0.17 installed: ``natten.functional.na2d_av``;
* otherwise the custom op ``torch.ops.overlock.contmix_aggregate`` (forward
  and backward, seen as one op by autograd and by
  ``torch.utils.flop_counter``), which runs the Triton kernels of
  :mod:`.triton_contmix` (CUDA tensors when triton is installed, or any
  tensor with ``kernels='triton'``; see :mod:`overlock.config`), else one of
  two PyTorch implementations, chosen per shape (the ``contmix`` switch;
  ``'auto'`` times both once on CPU and takes the band one elsewhere):

  * *slices*: ``K * K`` fused multiply-adds of shifted slices; few flops,
    many passes over the output, best for maps much wider than K;
  * *band*: for each window row, every image row is one small matrix product
    ``out_row (W, C) += A (W, W') @ value_row (W', C)`` with the pixels'
    weights scattered into a banded ``A`` (W' = the columns the row's windows
    cover; wide maps are split into column blocks); more flops but all in
    GEMMs, 2-6x faster at training sizes.

  Neither ever holds a tensor with both the window and the channel axes:
  memory is ``O(B * H * W * (C + K * K))``.

:func:`aggregate_window_major` is the no-autograd entry of the fused CPU
inference path (window-major weights, accumulates into ``out``).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from ..config import settings
from .accelerators import natten_av, triton_kernels
from .autotune import AutoTuner
from .caching import cache_unless_compiling, outside_inference_mode
from .dispatch import HALF_DTYPES, direct, needs_grad

__all__ = [
    'contmix_aggregate', 'contmix_aggregate_reference',
    'aggregate_window_major', 'neighborhood_starts',
    'neighborhood_bias_index', 'bias_index', 'neighborhood_bias',
    'neighborhood_bias_grad', 'uses_natten', 'check_map_size',
    'contmix_size',
    'at_contmix_size', 'upsample_bilinear'
]


# --------------------------------------------------------------------------
# Window geometry (NATTEN semantics, dilation 1)
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


@cache_unless_compiling(maxsize=64)
def bias_index(height: int, width: int, kernel_size: int,
               device: torch.device) -> torch.Tensor:
    """:func:`neighborhood_bias_index`, cached per size and device."""
    with outside_inference_mode():
        return neighborhood_bias_index(height, width, kernel_size, device)


@cache_unless_compiling(maxsize=64)
def _bias_one_hot(length: int, kernel_size: int,
                  device: torch.device) -> torch.Tensor:
    """``(length * K, 2K - 1)``: row ``(i, k)`` selects the table row that
    position ``i`` uses for its ``k``-th window element."""
    with outside_inference_mode():
        rows = _bias_starts(length, kernel_size, device)[:, None] + \
            torch.arange(kernel_size, device=device)
        return F.one_hot(rows.flatten(), 2 * kernel_size - 1).float()


def _gather_bias(table, height, width, kernel_size):
    return table.flatten(1)[:, bias_index(height, width, kernel_size,
                                          table.device)]


class _NeighborhoodBias(torch.autograd.Function):
    """The table gather, whose gradient is two small matrix products
    instead of the scatter-add autograd runs for an index (on CUDA a sort:
    0.7 ms per call, 20 ms per OverLoCK-T training step at 2x800x1216 on an
    H100; on CPU the two cost about the same)."""

    @staticmethod
    def forward(ctx, table, height, width, kernel_size):
        ctx.conf = (height, width, kernel_size)
        return _gather_bias(table, height, width, kernel_size)

    @staticmethod
    def backward(ctx, grad):
        return (neighborhood_bias_grad(grad, *ctx.conf), None, None, None)


def neighborhood_bias_grad(grad: torch.Tensor, height: int, width: int,
                           kernel_size: int) -> torch.Tensor:
    """Gradient of the ``(G, 2K-1, 2K-1)`` table of
    :func:`neighborhood_bias` from that of its ``(G, H*W, K*K)`` output."""
    g, k = grad.shape[0], kernel_size
    # (G, H*W, K*K) -> (G, H*K, W*K): rows (i, ki), columns (j, kj)
    grad = grad.reshape(g, height, width, k, k).transpose(2, 3).reshape(
        g, height * k, width * k)
    rows = _bias_one_hot(height, k, grad.device).to(grad.dtype)
    cols = _bias_one_hot(width, k, grad.device).to(grad.dtype)
    return rows.t() @ grad @ cols


def neighborhood_bias(table: torch.Tensor, height: int, width: int,
                      kernel_size: int) -> torch.Tensor:
    """Relative-position bias of every pixel's window, ``(G, H*W, K*K)``,
    from a ``(G, 2K-1, 2K-1)`` table: ``table.flatten(1)[:, bias_index(H, W,
    K)]``, with a gradient computed as ``R^T G C`` (``R``, ``C``: one-hot
    maps from window rows / columns to table rows / columns) instead of a
    scatter-add. Same numbers (the gradient to float rounding;
    deterministic)."""
    if settings.reference or not needs_grad(table) or \
            torch.jit.is_tracing() or torch.jit.is_scripting():
        return _gather_bias(table, height, width, kernel_size)
    return _NeighborhoodBias.apply(table, height, width, kernel_size)


def contmix_size(height: int, width: int,
                 kernel_size: int) -> Tuple[int, int]:
    """Size at which ContMix runs: maps smaller than the kernel are enlarged
    (keeping the aspect ratio, truncating as upstream does)."""
    if min(height, width) >= kernel_size:
        return height, width
    if height < width:
        return kernel_size, int(kernel_size / height * width)
    return int(kernel_size / width * height), kernel_size


def upsample_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)``.

    Under ``torch.compile`` a 1x1 map is broadcast instead (what bilinear
    interpolation of one pixel gives, exactly): inductor's CPU backend
    (torch 2.12) fails to compile the interpolation's backward for a 1x1
    input (a vectorised scatter-add), which the tiny maps of small inputs
    reach (the Overview-Net's context, stage 4 at 32x32)."""
    if torch.compiler.is_compiling() and x.shape[-2:] == (1, 1):
        return x.expand(*x.shape[:-2], *size).contiguous()
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def at_contmix_size(fn, x: torch.Tensor, x_f: torch.Tensor,
                    kernel_size: int) -> torch.Tensor:
    """``fn(x, x_f)``, run on maps enlarged to :func:`contmix_size`
    (bilinear) and pooled back to the size of ``x`` when they are smaller
    than the kernel, as upstream does."""
    height, width = x.shape[2:]
    size = contmix_size(height, width, kernel_size)
    if size == (height, width):
        return fn(x, x_f)
    x, x_f = upsample_bilinear(x, size), upsample_bilinear(x_f, size)
    return F.adaptive_avg_pool2d(fn(x, x_f), (height, width))


# --------------------------------------------------------------------------
# Slices implementation
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


def _slices_forward(attn_t, value, kernel_size, out):
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


def _slices_backward(attn_t, value, kernel_size, grad_out, need_attn,
                     need_value):
    height, width = value.shape[2:4]
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
    return grad_attn, grad_value


# --------------------------------------------------------------------------
# Band implementation
# --------------------------------------------------------------------------
_BAND_BLOCK = 32


@cache_unless_compiling(maxsize=256)
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
    if need_attn:
        grad_attn = grad_attn.flatten(4)
    return grad_attn, grad_value


# --------------------------------------------------------------------------
# Choice between the two
# --------------------------------------------------------------------------
_tuner = AutoTuner('ContMix aggregation (band, slices)')


def _use_band(value: torch.Tensor, kernel_size: int) -> bool:
    """Whether the band implementation runs for this shape: the ``contmix``
    switch, or in ``'auto'`` the faster one (timed once per shape on CPU;
    always band on other devices)."""
    if settings.contmix != 'auto':
        return settings.contmix == 'band'
    if value.device.type != 'cpu':
        return True
    key = (tuple(value.shape), kernel_size, value.dtype,
           torch.get_num_threads())
    return _tuner.choose(key, lambda: _timing_candidates(value, kernel_size))


def _timing_candidates(value, kernel_size):
    v = value.detach().contiguous()
    k2 = kernel_size * kernel_size
    attn = torch.full((*v.shape[:4], k2), 1. / k2, dtype=v.dtype)
    a6 = attn.view(*v.shape[:4], kernel_size, kernel_size)
    attn_t = attn.permute(4, 0, 1, 2, 3).contiguous()
    out = torch.zeros_like(v)

    def band():
        with torch.no_grad():
            _band_forward(a6, v, kernel_size, out)

    def slices():
        with torch.no_grad():
            _slices_forward(attn_t, v, kernel_size, out)

    return [(True, band), (False, slices)]


def _window_major(attn: torch.Tensor) -> torch.Tensor:
    """``(B, G, H, W, K*K)`` -> contiguous ``(K*K, B, G, H, W)``."""
    return attn.permute(4, 0, 1, 2, 3).contiguous()


def aggregate_window_major(attn: torch.Tensor, value: torch.Tensor,
                           kernel_size: int,
                           out: torch.Tensor) -> torch.Tensor:
    """``out += aggregation`` without autograd, for window-major weights
    ``(B, G, K*K, H, W)`` (any strides); ``value``/``out``: ``(B, G, H, W,
    C)``, ``out`` contiguous."""
    if _use_band(value, kernel_size):
        a6 = attn.permute(0, 1, 3, 4, 2).unflatten(4, (kernel_size,) * 2)
        return _band_forward(a6, value, kernel_size, out)
    return _slices_forward(attn.permute(2, 0, 1, 3, 4), value, kernel_size,
                           out)


# --------------------------------------------------------------------------
# The custom op (autograd and the FLOP counter see one op)
# --------------------------------------------------------------------------
def _aggregate_impl(attn: torch.Tensor, value: torch.Tensor,
                    kernel_size: int) -> torch.Tensor:
    kernels = triton_kernels(value)
    if kernels is not None:
        return kernels.forward(attn, value, kernel_size).contiguous()
    dtype = value.dtype
    if dtype in HALF_DTYPES:  # the PyTorch paths accumulate in their dtype
        attn, value = attn.float(), value.float()
    out = torch.zeros_like(value, memory_format=torch.contiguous_format)
    if _use_band(value, kernel_size):
        a6 = attn.unflatten(-1, (kernel_size, kernel_size))
        return _band_forward(a6, value, kernel_size, out).to(dtype) \
            .contiguous()
    return _slices_forward(_window_major(attn), value, kernel_size,
                           out).to(dtype).contiguous()


_aggregate_op = torch.library.custom_op(
    'overlock::contmix_aggregate', mutates_args=())(_aggregate_impl)


@_aggregate_op.register_fake
def _(attn, value, kernel_size):
    return torch.empty_like(value, memory_format=torch.contiguous_format)


def _aggregate_backward_impl(grad_out: torch.Tensor, attn: torch.Tensor,
                             value: torch.Tensor, kernel_size: int,
                             need_attn: bool,
                             need_value: bool) -> Tuple[torch.Tensor,
                                                        torch.Tensor]:
    grad_out = grad_out.contiguous()
    kernels = triton_kernels(value)
    dtype, attn_dtype = value.dtype, attn.dtype
    if kernels is None and dtype in HALF_DTYPES:  # accumulate in float32
        grad_out, attn, value = grad_out.float(), attn.float(), value.float()
    if kernels is not None:
        ga, gv = kernels.backward(grad_out, attn, value, kernel_size,
                                  need_attn, need_value)
    elif _use_band(value, kernel_size):
        a6 = attn.unflatten(-1, (kernel_size, kernel_size))
        ga, gv = _band_backward(a6, value, kernel_size, grad_out, need_attn,
                                need_value)
    else:
        ga, gv = _slices_backward(_window_major(attn), value, kernel_size,
                                  grad_out, need_attn, need_value)
    # custom ops return tensors: empty ones stand for "not needed"; the
    # gradients are contiguous whatever the inputs' strides (as the fake
    # says: inductor lays out what it compiles by the fake's strides)
    return (ga.to(attn_dtype).contiguous() if need_attn
            else attn.new_empty(0, dtype=attn_dtype),
            gv.to(dtype).contiguous() if need_value
            else value.new_empty(0, dtype=dtype))


_aggregate_backward_op = torch.library.custom_op(
    'overlock::contmix_aggregate_backward',
    mutates_args=())(_aggregate_backward_impl)


def aggregate(attn: torch.Tensor, value: torch.Tensor,
              kernel_size: int) -> torch.Tensor:
    """The aggregation without autograd: the implementation in eager
    execution, else the custom op (see :mod:`.dispatch`)."""
    fn = _aggregate_impl if direct(attn, value) else _aggregate_op
    return fn(attn, value, kernel_size)


def aggregate_backward(grad_out, attn, value, kernel_size: int,
                       need_attn: bool, need_value: bool):
    """``(grad attn, grad value)`` of the aggregation (empty where not
    needed): the implementation in eager execution, else the custom op
    (see :mod:`.dispatch`)."""
    fn = _aggregate_backward_impl if direct(grad_out, attn, value) else \
        _aggregate_backward_op
    return fn(grad_out, attn, value, kernel_size, need_attn, need_value)


@_aggregate_backward_op.register_fake
def _(grad_out, attn, value, kernel_size, need_attn, need_value):
    dense = torch.contiguous_format
    return (torch.empty_like(attn, memory_format=dense) if need_attn
            else attn.new_empty(0),
            torch.empty_like(value, memory_format=dense) if need_value
            else value.new_empty(0))


def _setup_context(ctx, inputs, output):
    attn, value, kernel_size = inputs
    ctx.save_for_backward(attn, value)
    ctx.kernel_size = kernel_size


def _backward(ctx, grad_out):
    attn, value = ctx.saved_tensors
    need_attn, need_value = ctx.needs_input_grad[:2]
    ga, gv = aggregate_backward(grad_out, attn, value, ctx.kernel_size,
                                need_attn, need_value)
    return (ga if need_attn else None, gv if need_value else None, None)


_aggregate_op.register_autograd(_backward, setup_context=_setup_context)


def _macs(value_shape, kernel_size: int) -> int:
    b, g, h, w, c = value_shape
    return b * g * h * w * c * kernel_size * kernel_size


@register_flop_formula(torch.ops.overlock.contmix_aggregate)
def _aggregate_flops(attn_shape, value_shape, kernel_size, *args, **kwargs):
    return 2 * _macs(value_shape, kernel_size)


@register_flop_formula(torch.ops.overlock.contmix_aggregate_backward)
def _aggregate_backward_flops(grad_shape, attn_shape, value_shape,
                              kernel_size, need_attn, need_value, *args,
                              **kwargs):
    return 2 * _macs(value_shape, kernel_size) * (int(need_attn) +
                                                  int(need_value))


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------
def _check_aggregate_args(attn, value, kernel_size):
    if not isinstance(kernel_size, int) or kernel_size < 1 or \
            kernel_size % 2 == 0:
        raise ValueError('contmix_aggregate: kernel_size must be a positive '
                         f'odd int (a centred window), got {kernel_size!r}')
    if attn.dim() != 5 or value.dim() != 5:
        raise ValueError('contmix_aggregate expects attn (B, G, H, W, K*K) and '
                         f'value (B, G, H, W, C), got {tuple(attn.shape)} and '
                         f'{tuple(value.shape)}')
    if attn.shape[:4] != value.shape[:4] or \
            attn.shape[-1] != kernel_size * kernel_size:
        raise ValueError(
            f'attn {tuple(attn.shape)} does not match value '
            f'{tuple(value.shape)} with kernel_size {kernel_size}')
    check_map_size(value, kernel_size)


def check_map_size(value: torch.Tensor, kernel_size: int) -> None:
    """A clear error for ``(B, G, H, W, C)`` values smaller than the
    kernel."""
    if min(value.shape[2:4]) < kernel_size:
        raise ValueError(
            f'ContMix aggregation needs maps of at least {kernel_size} x '
            f'{kernel_size}, got {tuple(value.shape[2:4])}')


def uses_natten(value: torch.Tensor) -> bool:
    """Whether :func:`contmix_aggregate` hands ``value`` to natten."""
    return (not settings.reference and value.is_cuda and
            settings.kernels != 'triton' and natten_av() is not None)


def contmix_aggregate(attn: torch.Tensor, value: torch.Tensor,
                      kernel_size: int) -> torch.Tensor:
    """Neighbourhood aggregation with NATTEN's ``na2d_av`` semantics:
    ``out[b,g,i,j] = sum_k attn[b,g,i,j,k] * value[b,g,n_k(i,j)]``.

    Args:
        attn (Tensor): ``(B, G, H, W, K*K)`` weights of each pixel's window,
            row-major over the window; in ``value``'s dtype, or float32 with
            half-precision values (autocast's softmax output, used as it
            is: no half copy is made or saved for the backward, and the
            weights' gradient is float32).
        value (Tensor): ``(B, G, H, W, C)`` values.
        kernel_size (int): ``K``, odd, at most ``min(H, W)``.

    Returns:
        Tensor: ``(B, G, H, W, C)``.
    """
    _check_aggregate_args(attn, value, kernel_size)
    if settings.reference:
        return contmix_aggregate_reference(attn, value, kernel_size)
    if uses_natten(value):
        return natten_av()(attn.to(value.dtype), value,
                           kernel_size=kernel_size)
    if attn.dtype != value.dtype and not (attn.dtype == torch.float32 and
                                          value.dtype in HALF_DTYPES):
        attn = attn.to(value.dtype)
    if needs_grad(attn, value):
        return _aggregate_op(attn, value, kernel_size)
    return aggregate(attn, value, kernel_size)


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
