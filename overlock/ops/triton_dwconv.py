"""Triton kernels of the stride-1 "same" depthwise convolution: forward,
input gradient and weight gradient.

Imported lazily (it imports triton) by :mod:`overlock.ops.dwconv` when the
``kernels`` switch selects Triton for a tensor (``kernels='triton'``,
``OVERLOCK_KERNELS=triton``), which on CPU needs ``TRITON_INTERPRET=1`` set
before the first use: that is how the tests check these kernels without a
GPU.

``x`` is ``(N, C, H, W)``, ``weight`` ``(C, 1, K, K)`` applied with dilation
``d`` and padding ``d * (K - 1) / 2`` on each side (odd ``K``), so the output
has the input's size. Inputs may be float32, float16 or bfloat16; products
are accumulated in float32 and written in the input's dtype. Two families:

* **float32: direct kernels.** Forward: one program per ``(image, channel)``
  plane tile, ``K * K`` taps, each a shifted load. Weight gradient
  ``dW[c, t] = sum_{n, h, w} x[n, c, h + dy_t, w + dx_t] * dY[n, c, h, w]``:
  a split reduction (each program sums one slice of the ``N * H * W``
  pixels for one channel and a block of taps into a float32 partial).
* **float16 / bfloat16: tensor-core kernels** (``tl.dot``), one matrix
  product per kernel row instead of ``K`` multiply-adds per output
  (:func:`uses_tensor_cores`). A row of the output tile is a correlation
  of a row of the input with the kernel row ``w[ki]``, that is a product
  with the banded (Toeplitz) matrix ``T[j', j] = w[ki, (j' - j) / d]``
  (zero off the band): ``out[rows, :] += x[rows + ki * d, cols] @ T``, an
  ``(BLOCK_H x BLOCK_IN) @ (BLOCK_IN x BLOCK_W)`` product whose ``BLOCK_IN
  = BLOCK_W + span - 1`` input columns (rounded up to a power of two) cover
  the tile and its halo; ``T`` is gathered from the ``K * K`` weights in
  the kernel. ``K * BLOCK_IN`` tensor-core multiply-adds per output (544
  for ``K = 17``) against ``K * K`` scalar ones (289), at ~15x the rate.
  The weight gradient uses the same band: ``D = x[rows + ki * d, cols]^T @
  dY[rows, :]`` summed over the tiles of a slice of the pixels, whose
  diagonals ``dW[c, ki, kj] = sum_j D[j + kj * d, j]`` are read once at the
  end. Products of two half-precision numbers are exact in float32, so the
  numbers are those of the direct kernels up to the order of the float32
  sums.

The input gradient is the forward with the kernel rotated by 180 degrees
(stride 1 and symmetric padding make the transposed convolution a
correlation). The weight-gradient partials are added in a fixed order
(deterministic).
"""
import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from .accelerators import interpreter_bf16_dot

if os.environ.get('TRITON_INTERPRET', '0') == '1':
    interpreter_bf16_dot()  # the tests' interpreter, not the compiler

__all__ = ['forward', 'input_grad', 'weight_grad', 'uses_tensor_cores',
           'DTYPES']

#: dtypes the kernels take (float64 stays with the PyTorch convolution)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_BLOCK_H = 16
_BLOCK_W = 32
_BLOCK_P = 128  # pixels per step of the weight-gradient reduction
_MAX_BLOCK_T = 64  # taps per weight-gradient program
#: weight-gradient programs aimed at (channels x tap blocks x splits)
_TARGET_PROGRAMS = 4096
#: output columns per tensor-core tile: the matrix product's N (>= 16); its
#: reduction length is the tile's input columns, 16 + span - 1 rounded up
#: to a power of two (32 for every span up to 17)
_DOT_BLOCK_W = 16
#: dtypes the tensor-core kernels take (a float32 ``tl.dot`` would round
#: its inputs to tf32)
DOT_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _conv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W,
                 K: tl.constexpr, DIL: tl.constexpr, FLIP: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr):
    """``out[n, c] = sum_t w[c, t] * x[n, c] shifted by tap t`` (+ bias);
    ``FLIP`` reads the kernel rotated by 180 degrees."""
    nc = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    w = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = nc % C
    plane = nc.to(tl.int64) * H * W
    pad = DIL * (K - 1) // 2
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for ki in range(K):
        hi = h + ki * DIL - pad
        row_ok = (hi >= 0) & (hi < H)
        for kj in range(K):
            wi = w + kj * DIL - pad
            ok = row_ok[:, None] & ((wi >= 0) & (wi < W))[None, :]
            if FLIP:
                tap = (K - 1 - ki) * K + (K - 1 - kj)
            else:
                tap = ki * K + kj
            wt = tl.load(w_ptr + c * K * K + tap).to(tl.float32)
            v = tl.load(x_ptr + plane + hi[:, None] * W + wi[None, :],
                        mask=ok, other=0.)
            acc += wt * v.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    out_ok = (h < H)[:, None] & (w < W)[None, :]
    tl.store(out_ptr + plane + h[:, None] * W + w[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, part_ptr, C, H, W, NHW, PER_SPLIT,
                        K: tl.constexpr, DIL: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """``part[s, c, t] = sum over the pixels of split s of
    x[n, c, h + dy_t, w + dx_t] * g[n, c, h, w]`` (float32)."""
    c = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    s = tl.program_id(2)
    t_ok = t < K * K
    pad = DIL * (K - 1) // 2
    dy = (t // K) * DIL - pad
    dx = (t % K) * DIL - pad
    start = s * PER_SPLIT
    end = tl.minimum(start + PER_SPLIT, NHW)
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < end
        n = p // (H * W)
        hw = p % (H * W)
        y = hw // W
        xw = hw % W
        plane = (n.to(tl.int64) * C + c) * H * W
        g = tl.load(g_ptr + plane + hw, mask=p_ok, other=0.)
        yy = y[None, :] + dy[:, None]
        xx = xw[None, :] + dx[:, None]
        ok = t_ok[:, None] & p_ok[None, :] & (yy >= 0) & (yy < H) & \
            (xx >= 0) & (xx < W)
        v = tl.load(x_ptr + plane[None, :] + yy * W + xx, mask=ok, other=0.)
        acc += v.to(tl.float32) * g.to(tl.float32)[None, :]
    tl.store(part_ptr + (s * C + c) * K * K + t, tl.sum(acc, axis=1),
             mask=t_ok)


@triton.jit
def _band(BLOCK_IN: tl.constexpr, BLOCK_W: tl.constexpr, K: tl.constexpr,
          DIL: tl.constexpr):
    """``(kj, on)`` of the banded matrix ``T[j', j]``: the kernel column
    ``kj`` that input column ``j'`` meets at output column ``j``, and
    whether it is a tap (``0 <= j' - j < span``, a multiple of ``DIL``)."""
    off = tl.arange(0, BLOCK_IN)[:, None] - tl.arange(0, BLOCK_W)[None, :]
    on = (off >= 0) & (off < DIL * (K - 1) + 1) & (off % DIL == 0)
    return off // DIL, on


@triton.jit
def _conv_dot_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W,
                     K: tl.constexpr, DIL: tl.constexpr, FLIP: tl.constexpr,
                     HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_W: tl.constexpr, BLOCK_IN: tl.constexpr):
    """The convolution of one output tile as ``K`` matrix products, one per
    kernel row, with the row's banded matrix (see the module docstring)."""
    nc = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    w0 = tl.program_id(2) * BLOCK_W
    c = nc % C
    plane = nc.to(tl.int64) * H * W
    pad = DIL * (K - 1) // 2
    cols = w0 - pad + tl.arange(0, BLOCK_IN)
    cols_ok = (cols >= 0) & (cols < W)
    kj, on = _band(BLOCK_IN, BLOCK_W, K, DIL)
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for ki in range(K):
        hi = h + ki * DIL - pad
        ok = ((hi >= 0) & (hi < H))[:, None] & cols_ok[None, :]
        v = tl.load(x_ptr + plane + hi[:, None] * W + cols[None, :], mask=ok,
                    other=0.)
        if FLIP:
            tap = (K - 1 - ki) * K + (K - 1 - kj)
        else:
            tap = ki * K + kj
        band = tl.load(w_ptr + c * K * K + tap, mask=on, other=0.)
        acc = tl.dot(v, band, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    w = w0 + tl.arange(0, BLOCK_W)
    out_ok = (h < H)[:, None] & (w < W)[None, :]
    tl.store(out_ptr + plane + h[:, None] * W + w[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _weight_grad_dot_kernel(x_ptr, g_ptr, part_ptr, C, H, W, TILES_H,
                            TILES_W, TILES, PER_SPLIT, K: tl.constexpr,
                            DIL: tl.constexpr, BLOCK_H: tl.constexpr,
                            BLOCK_W: tl.constexpr, BLOCK_IN: tl.constexpr):
    """``part[s, c, ki, :]``: kernel row ``ki``'s weight gradient summed
    over the tiles of split ``s``, as the diagonals of ``sum x^T @ dY``."""
    c = tl.program_id(0)
    ki = tl.program_id(1)
    s = tl.program_id(2)
    pad = DIL * (K - 1) // 2
    acc = tl.zeros((BLOCK_IN, BLOCK_W), dtype=tl.float32)
    start = s * PER_SPLIT
    for t in range(start, tl.minimum(start + PER_SPLIT, TILES)):
        n = t // (TILES_H * TILES_W)
        r = t % (TILES_H * TILES_W)
        h = (r // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
        w0 = (r % TILES_W) * BLOCK_W
        w = w0 + tl.arange(0, BLOCK_W)
        plane = (n.to(tl.int64) * C + c) * H * W
        g = tl.load(g_ptr + plane + h[:, None] * W + w[None, :],
                    mask=(h < H)[:, None] & (w < W)[None, :], other=0.)
        hi = h + ki * DIL - pad
        cols = w0 - pad + tl.arange(0, BLOCK_IN)
        ok = ((hi >= 0) & (hi < H))[:, None] & \
            ((cols >= 0) & (cols < W))[None, :]
        v = tl.load(x_ptr + plane + hi[:, None] * W + cols[None, :], mask=ok,
                    other=0.)
        acc = tl.dot(tl.trans(v), g, acc)
    kj, on = _band(BLOCK_IN, BLOCK_W, K, DIL)
    out = part_ptr + ((s * C + c) * K + ki) * K
    for j in tl.static_range(K):
        tl.store(out + j, tl.sum(tl.sum(tl.where(on & (kj == j), acc, 0.),
                                        axis=1), axis=0))


def _check(x, weight, padding, dilation):
    k = weight.shape[-1]
    if x.dim() != 4 or weight.shape != (x.shape[1], 1, k, k) or k % 2 == 0:
        raise ValueError(
            f'triton depthwise convolution takes x (N, C, H, W) and an odd '
            f'square weight (C, 1, K, K), got {tuple(x.shape)} and '
            f'{tuple(weight.shape)}')
    if 2 * padding != dilation * (k - 1):
        raise ValueError(
            f'triton depthwise convolution computes "same" convolutions '
            f'(padding = dilation * (K - 1) / 2 = {dilation * (k - 1) // 2}), '
            f'got padding {padding}')
    if x.dtype not in DTYPES or weight.dtype != x.dtype:
        raise TypeError(
            f'triton depthwise convolution takes float32, float16 or '
            f'bfloat16 inputs of one dtype, got {x.dtype} and {weight.dtype}')


def uses_tensor_cores(dtype: torch.dtype) -> bool:
    """Whether tensors of ``dtype`` take the tensor-core kernels."""
    return dtype in DOT_DTYPES


def _dot_blocks(h: int, kernel_size: int, dilation: int) -> Tuple[int, int]:
    """``(BLOCK_H, BLOCK_IN)`` of the tensor-core kernels: the tile's rows
    (the product's M: 16 to 64, no more than the map needs) and its input
    columns (output columns + halo, a power of two)."""
    block_h = min(64, max(16, triton.next_power_of_2(h)))
    span = dilation * (kernel_size - 1) + 1
    return block_h, triton.next_power_of_2(_DOT_BLOCK_W + span - 1)


def _conv(x, weight, bias, dilation, flip):
    n, c, h, w = x.shape
    k = weight.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    args = (x, weight.contiguous(),
            bias.contiguous() if bias is not None else x, out, c, h, w)
    if uses_tensor_cores(x.dtype):
        block_h, block_in = _dot_blocks(h, k, dilation)
        grid = (n * c, triton.cdiv(h, block_h), triton.cdiv(w, _DOT_BLOCK_W))
        _conv_dot_kernel[grid](*args, K=k, DIL=dilation, FLIP=flip,
                               HAS_BIAS=bias is not None, BLOCK_H=block_h,
                               BLOCK_W=_DOT_BLOCK_W, BLOCK_IN=block_in)
        return out
    grid = (n * c, triton.cdiv(h, _BLOCK_H), triton.cdiv(w, _BLOCK_W))
    _conv_kernel[grid](*args, K=k, DIL=dilation, FLIP=flip,
                       HAS_BIAS=bias is not None, BLOCK_H=_BLOCK_H,
                       BLOCK_W=_BLOCK_W)
    return out


def forward(x: torch.Tensor, weight: torch.Tensor, bias, padding: int,
            dilation: int) -> torch.Tensor:
    """The convolution; output contiguous, in ``x``'s dtype."""
    _check(x, weight, padding, dilation)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return _conv(x, weight, bias, dilation, flip=False)


def input_grad(grad_out: torch.Tensor, weight: torch.Tensor, padding: int,
               dilation: int) -> torch.Tensor:
    """``d loss / d x``: the output gradient convolved with the flipped
    kernel."""
    _check(grad_out, weight, padding, dilation)
    return _conv(grad_out, weight, None, dilation, flip=True)


def split_count(channels: int, taps: int, pixels: int) -> int:
    """Slices of the ``N * H * W`` pixels the weight gradient is split into:
    enough programs to fill a GPU, at least one block of pixels each."""
    tap_blocks = triton.cdiv(taps, min(_MAX_BLOCK_T,
                                       triton.next_power_of_2(taps)))
    want = triton.cdiv(_TARGET_PROGRAMS, channels * tap_blocks)
    return max(1, min(want, triton.cdiv(pixels, _BLOCK_P)))


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int,
                padding: int, dilation: int) -> torch.Tensor:
    """``d loss / d weight``, ``(C, 1, K, K)`` in ``x``'s dtype (summed in
    float32)."""
    c = x.shape[1]
    _check(x, x.new_empty(c, 1, kernel_size, kernel_size), padding, dilation)
    x, grad_out = x.contiguous(), grad_out.contiguous().to(x.dtype)
    if uses_tensor_cores(x.dtype):
        part = _weight_grad_dot(x, grad_out, kernel_size, dilation)
    else:
        part = _weight_grad_direct(x, grad_out, kernel_size, dilation)
    return part.sum(0).view(c, 1, kernel_size, kernel_size).to(x.dtype)


def _weight_grad_direct(x, grad_out, kernel_size, dilation):
    n, c, h, w = x.shape
    k2 = kernel_size * kernel_size
    pixels = n * h * w
    splits = split_count(c, k2, pixels)
    per_split = triton.cdiv(triton.cdiv(pixels, splits), _BLOCK_P) * _BLOCK_P
    splits = triton.cdiv(pixels, per_split)
    block_t = min(_MAX_BLOCK_T, triton.next_power_of_2(k2))
    part = torch.empty(splits, c, k2, device=x.device, dtype=torch.float32)
    grid = (c, triton.cdiv(k2, block_t), splits)
    _weight_grad_kernel[grid](x, grad_out, part, c, h, w, pixels, per_split,
                              K=kernel_size, DIL=dilation, BLOCK_T=block_t,
                              BLOCK_P=_BLOCK_P)
    return part


def _weight_grad_dot(x, grad_out, kernel_size, dilation):
    n, c, h, w = x.shape
    block_h, block_in = _dot_blocks(h, kernel_size, dilation)
    tiles_h, tiles_w = triton.cdiv(h, block_h), triton.cdiv(w, _DOT_BLOCK_W)
    tiles = n * tiles_h * tiles_w
    # programs: channels x kernel rows x slices of the tiles
    want = triton.cdiv(_TARGET_PROGRAMS, c * kernel_size)
    per_split = triton.cdiv(tiles, max(1, min(want, tiles)))
    splits = triton.cdiv(tiles, per_split)
    part = torch.empty(splits, c, kernel_size * kernel_size,
                       device=x.device, dtype=torch.float32)
    _weight_grad_dot_kernel[(c, kernel_size, splits)](
        x, grad_out, part, c, h, w, tiles_h, tiles_w, tiles, per_split,
        K=kernel_size, DIL=dilation, BLOCK_H=block_h, BLOCK_W=_DOT_BLOCK_W,
        BLOCK_IN=block_in)
    return part
