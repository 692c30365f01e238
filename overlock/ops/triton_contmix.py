"""Triton kernels of the ContMix aggregation (forward and both gradients).

Imported lazily (it imports triton) by :mod:`overlock.ops.contmix` when the
``kernels`` switch selects them: by default for CUDA tensors when triton is
installed, or always with ``kernels='triton'`` (``OVERLOCK_KERNELS=triton``),
which on CPU needs ``TRITON_INTERPRET=1`` set before the first use: that is how
the tests check these kernels without a GPU.

Semantics are NATTEN's ``na2d_av`` (see :mod:`overlock.ops.contmix`): pixel
``(i, j)`` reads the ``K x K`` window starting at
``(clamp(i - K//2, 0, H - K), clamp(j - K//2, 0, W - K))``. Inputs may be
float32, float16 or bfloat16, the weights also float32 with half-precision
values; products are accumulated in float32 and each result is written in
the dtype of its input (output: the values'; weight gradient: the
weights'). No tensor with both the window and the channel
axes is ever formed, and the value gradient is a gather (each value position
sums over the pixels whose window covers it), so results are deterministic.
"""
import triton
import triton.language as tl
import torch

__all__ = ['forward', 'backward']

_BLOCK_P = 32  # pixels per program
_BLOCK_C = 32  # channels per program / per step


@triton.jit
def _start(idx, length, K: tl.constexpr):
    """First row (or column) of the window of position ``idx``."""
    return tl.minimum(tl.maximum(idx - K // 2, 0), length - K)


@triton.jit
def _forward_kernel(attn_ptr, value_ptr, out_ptr, H, W, C,
                    K: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    bg = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < H * W
    mask = p_ok[:, None] & (c < C)[None, :]
    si = _start(p // W, H, K)
    sj = _start(p % W, W, K)
    attn = attn_ptr + bg.to(tl.int64) * H * W * K * K + p * K * K
    value = value_ptr + bg.to(tl.int64) * H * W * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ki in range(K):
        for kj in range(K):
            a = tl.load(attn + ki * K + kj, mask=p_ok, other=0.)
            src = (si + ki) * W + sj + kj
            v = tl.load(value + src[:, None] * C + c[None, :], mask=mask,
                        other=0.)
            acc += a.to(tl.float32)[:, None] * v.to(tl.float32)
    out = out_ptr + bg.to(tl.int64) * H * W * C + p[:, None] * C + c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_attn_kernel(grad_ptr, value_ptr, gattn_ptr, H, W, C,
                      K: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """``grad_attn[p, k] = sum_c grad_out[p, c] * value[n_k(p), c]``."""
    bg = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.program_id(2)
    p_ok = p < H * W
    src = (_start(p // W, H, K) + k // K) * W + _start(p % W, W, K) + k % K
    grad = grad_ptr + bg.to(tl.int64) * H * W * C
    value = value_ptr + bg.to(tl.int64) * H * W * C
    acc = tl.zeros((BLOCK_P, ), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = p_ok[:, None] & (c < C)[None, :]
        g = tl.load(grad + p[:, None] * C + c[None, :], mask=mask, other=0.)
        v = tl.load(value + src[:, None] * C + c[None, :], mask=mask,
                    other=0.)
        acc += tl.sum(g.to(tl.float32) * v.to(tl.float32), axis=1)
    gattn = gattn_ptr + bg.to(tl.int64) * H * W * K * K + p * K * K + k
    tl.store(gattn, acc.to(gattn_ptr.dtype.element_ty), mask=p_ok)


@triton.jit
def _covering(y, length, K: tl.constexpr):
    """First and last position whose window covers ``y`` (a range, since
    window starts never decrease)."""
    lo = tl.where(y - K + 1 <= 0, 0, y - K + 1 + K // 2)
    hi = tl.where(y >= length - K, length - 1, y + K // 2)
    return lo, hi


@triton.jit
def _grad_value_kernel(grad_ptr, attn_ptr, gvalue_ptr, H, W, C,
                       K: tl.constexpr, SPAN: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``grad_value[q, c] = sum over pixels p whose window holds q of
    attn[p, k(p, q)] * grad_out[p, c]`` (a gather: no atomics)."""
    bg = tl.program_id(0)
    q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok = q < H * W
    c_ok = c < C
    y = q // W
    x = q % W
    i_lo, i_hi = _covering(y, H, K)
    j_lo, j_hi = _covering(x, W, K)
    grad = grad_ptr + bg.to(tl.int64) * H * W * C
    attn = attn_ptr + bg.to(tl.int64) * H * W * K * K
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for di in range(SPAN):
        i = i_lo + di
        ki = y - _start(i, H, K)
        for dj in range(SPAN):
            j = j_lo + dj
            kj = x - _start(j, W, K)
            ok = q_ok & (i <= i_hi) & (j <= j_hi)
            pix = i * W + j
            a = tl.load(attn + pix * K * K + ki * K + kj, mask=ok, other=0.)
            g = tl.load(grad + pix[:, None] * C + c[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=0.)
            acc += a.to(tl.float32)[:, None] * g.to(tl.float32)
    out = gvalue_ptr + bg.to(tl.int64) * H * W * C + q[:, None] * C + \
        c[None, :]
    tl.store(out, acc.to(gvalue_ptr.dtype.element_ty),
             mask=q_ok[:, None] & c_ok[None, :])


def _shape(value: torch.Tensor):
    b, g, h, w, c = value.shape
    return b * g, h, w, c


def forward(attn: torch.Tensor, value: torch.Tensor,
            kernel_size: int) -> torch.Tensor:
    """``(B, G, H, W, K*K)`` weights and ``(B, G, H, W, C)`` values ->
    ``(B, G, H, W, C)``."""
    attn, value = attn.contiguous(), value.contiguous()
    bg, h, w, c = _shape(value)
    out = torch.empty_like(value)
    grid = (bg, triton.cdiv(h * w, _BLOCK_P), triton.cdiv(c, _BLOCK_C))
    _forward_kernel[grid](attn, value, out, h, w, c, K=kernel_size,
                          BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C)
    return out


def backward(grad_out: torch.Tensor, attn: torch.Tensor,
             value: torch.Tensor, kernel_size: int, need_attn: bool,
             need_value: bool):
    """``(grad_attn, grad_value)``; ``None`` for what is not needed."""
    grad_out = grad_out.contiguous()
    attn, value = attn.contiguous(), value.contiguous()
    bg, h, w, c = _shape(value)
    pixel_blocks = triton.cdiv(h * w, _BLOCK_P)
    grad_attn = grad_value = None
    if need_attn:
        grad_attn = torch.empty_like(attn)
        _grad_attn_kernel[(bg, pixel_blocks, kernel_size * kernel_size)](
            grad_out, value, grad_attn, h, w, c, K=kernel_size,
            BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C)
    if need_value:
        grad_value = torch.empty_like(value)
        grid = (bg, pixel_blocks, triton.cdiv(c, _BLOCK_C))
        _grad_value_kernel[grid](
            grad_out, attn, grad_value, h, w, c, K=kernel_size,
            SPAN=kernel_size + kernel_size // 2, BLOCK_P=_BLOCK_P,
            BLOCK_C=_BLOCK_C)
    return grad_attn, grad_value
