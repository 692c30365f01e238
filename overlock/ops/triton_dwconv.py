"""Triton kernels of the stride-1 "same" depthwise convolution: forward,
input gradient and weight gradient.

Imported lazily (it imports triton) by :mod:`overlock.ops.dwconv` when the
``kernels`` switch selects Triton for a tensor: on CUDA when the per-shape
timing prefers it to cuDNN (``kernels='auto'``), or always with
``kernels='triton'`` (``OVERLOCK_KERNELS=triton``), which on CPU needs
``TRITON_INTERPRET=1`` set before the first use: that is how the tests check
these kernels without a GPU.

``x`` is ``(N, C, H, W)``, ``weight`` ``(C, 1, K, K)`` applied with dilation
``d`` and padding ``d * (K - 1) / 2`` on each side (odd ``K``), so the output
has the input's size. Inputs may be float32, float16 or bfloat16; products
are accumulated in float32 and written in the input's dtype.

* forward: one program per ``(image, channel)`` plane tile, ``K * K`` taps;
* input gradient: the same kernel with the flipped kernel (stride 1 and
  symmetric padding make the transposed convolution a correlation);
* weight gradient (where cuDNN's depthwise kernels are slow for large
  ``K``): ``dW[c, t] = sum_{n, h, w} x[n, c, h + dy_t, w + dx_t] *
  dY[n, c, h, w]``, a split reduction: each program sums one slice of the
  ``N * H * W`` pixels for one channel and a block of taps into a float32
  partial, and the partials are added in a fixed order (deterministic).
"""
import triton
import triton.language as tl
import torch

__all__ = ['forward', 'input_grad', 'weight_grad', 'DTYPES']

#: dtypes the kernels take (float64 stays with the PyTorch convolution)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_BLOCK_H = 16
_BLOCK_W = 32
_BLOCK_P = 128  # pixels per step of the weight-gradient reduction
_MAX_BLOCK_T = 64  # taps per weight-gradient program
#: weight-gradient programs aimed at (channels x tap blocks x splits)
_TARGET_PROGRAMS = 4096


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


def _conv(x, weight, bias, dilation, flip):
    n, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    grid = (n * c, triton.cdiv(h, _BLOCK_H), triton.cdiv(w, _BLOCK_W))
    _conv_kernel[grid](x, weight.contiguous(),
                       bias.contiguous() if bias is not None else x, out,
                       c, h, w, K=weight.shape[-1], DIL=dilation, FLIP=flip,
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
    n, c, h, w = x.shape
    k2 = kernel_size * kernel_size
    _check(x, x.new_empty(c, 1, kernel_size, kernel_size), padding, dilation)
    x, grad_out = x.contiguous(), grad_out.contiguous().to(x.dtype)
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
    return part.sum(0).view(c, 1, kernel_size, kernel_size).to(x.dtype)
