"""The two blocks of OverLoCK: :class:`RepConvBlock` (Base-Net and
Overview-Net) and :class:`DynamicConvBlock` (Focus-Net, with the
Context-Mixing dynamic kernels). Their layers are named by the views of
:mod:`overlock.layers`; eval without autograd runs :mod:`overlock.fused`,
training may recompute cheap segments (:mod:`overlock.recompute`).
"""
import contextlib
from typing import Optional

import torch
from torch import nn

from . import fused
from .layers import (BNConv, ConvBN, ConvBNAct, DropPath, Fusion, GRNMlp,
                     LargeKernelBN, LayerNorm2d, LayerScale, RepConvProj,
                     ResDWConv, SEModule, autocast_input)
from .config import settings
from .ops.contmix import at_contmix_size, contmix_aggregate, uses_natten
from .ops.contmix_weights import contmix_weights, softmax_aggregate
from .recompute import Recompute

__all__ = ['RepConvBlock', 'DynamicConvBlock']


class RepConvBlock(Recompute, nn.Module):
    """Base-Net / Overview-Net block: large-kernel conv + SE + GRN MLP.

    ``x = dwconv(x); x = ls(x) + proj(x)`` (``res_scale``) or
    ``x + proj(ls(x))``, with ``proj`` as named by :class:`RepConvProj`.
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4,
                 ls_init_value: Optional[float] = None,
                 res_scale: bool = False, drop_path: float = 0.,
                 deploy: bool = False, with_cp: bool = False,
                 selective_cp: bool = True):
        super().__init__()
        self.res_scale = res_scale
        self.with_cp = with_cp
        self.selective_cp = selective_cp
        self.dwconv = ResDWConv(dim, 3)
        self.proj = nn.Sequential(*RepConvProj.build(
            dim, int(dim * mlp_ratio), kernel_size, drop_path, deploy))
        self.ls = LayerScale(dim, ls_init_value) \
            if ls_init_value is not None else nn.Identity()

    def _branch(self, x):
        """``proj`` without its DropPath; LN -> large kernel -> BN -> SE and
        GELU -> ResDWConv -> GRN are recomputed in the backward."""
        p = RepConvProj(*self.proj)
        mlp = p.mlp
        h = self._cheap([p.norm, p.large_kernel, p.lk_bn, p.se, mlp.fc1], x)
        return _grn_mlp_tail(self, mlp, h)

    def _forward(self, x):
        x = self.dwconv(x)
        return _residual(x, self._branch(x), self.ls,
                         RepConvProj(*self.proj).drop_path, self.res_scale)

    def forward(self, x):
        if fused.enabled(self, x):
            return fused.repconv_forward(self, x)
        return self._maybe_checkpoint(self._forward, x)


def _residual(x, y, ls: nn.Module, drop_path: nn.Module, res_scale: bool):
    """``ls(x) + drop_path(y)`` (``res_scale``) or ``x + drop_path(ls(y))``."""
    return ls(x) + drop_path(y) if res_scale else x + drop_path(ls(y))


def _grn_mlp_tail(block: Recompute, mlp: GRNMlp, h):
    """The GRN MLP after ``fc1`` (``h``): GELU -> ResDWConv -> GRN recomputed
    in the backward.

    A segment ending in a convolution (here ``fc2``; ``fc1``, ``fusion.fc``
    and ``proj.conv`` end the segments before them) keeps nothing of its
    inside, not even the convolution's input: the backward rebuilds that
    input and differentiates the convolution directly
    (:func:`~overlock.recompute.segment`), so the convolution does not run
    twice. One map fewer kept per segment (an OverLoCK-T training
    forward at 800x1216, batch 2: -870 MB under fp16 autocast, -1,745 MB in
    float32); the recomputation also runs the GELU / the product before
    ``fusion.fc`` / ``proj.conv`` (30 operations per step) and, under
    autocast, casts the four convolutions' parameters again (autocast's
    cache does not outlive the forward).
    """
    return block._cheap([mlp.act, mlp.dwconv, mlp.grn, mlp.fc2], h)


@contextlib.contextmanager
def _float32_logits(x: torch.Tensor):
    """Under autocast: a region without it, yielding a cast to float32 (the
    ContMix logits and softmax: up to 17 * 17 + 25 logits per pixel, whose
    bfloat16 rounding would move the weights by ~1 %). Otherwise nothing
    changes (the cast is the identity)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        yield lambda t: t
        return
    with torch.autocast(device, enabled=False):
        yield lambda t: t.float()


class DynamicConvBlock(Recompute, nn.Module):
    """Focus-Net block with Context-Mixing dynamic kernels (ContMix).

    Each pixel's two depthwise kernels (``smk_size`` and ``kernel_size``) are
    computed from its affinity with a 7x7 pooled summary of the context,
    plus a relative-position bias, softmax-normalised, then applied to its
    neighbourhood.
    """

    #: children whose parameters are read as tensors (the float32 ContMix
    #: logits), not cast with the convolutions' (:mod:`overlock.param_cast`)
    raw_param_modules = ('weight_proj',)

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int = 7,
                 smk_size: int = 5, num_heads: int = 2, mlp_ratio: float = 4,
                 ls_init_value: Optional[float] = None,
                 res_scale: bool = False, drop_path: float = 0.,
                 is_first: bool = False, is_last: bool = False,
                 deploy: bool = False, with_cp: bool = False,
                 selective_cp: bool = True):
        super().__init__()
        ctx_dim = ctx_dim // 4
        out_dim = dim + ctx_dim
        self.dim = dim
        self.ctx_dim = ctx_dim
        self.kernel_size = kernel_size
        self.smk_size = smk_size
        self.num_heads = num_heads * 2  # as upstream: two kernels per head
        self.scale = (dim // self.num_heads)**-0.5
        self.res_scale = res_scale
        self.is_first = is_first
        self.is_last = is_last
        self.with_cp = with_cp
        self.selective_cp = selective_cp

        self.rpb1 = nn.Parameter(
            torch.zeros(self.num_heads, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(
            torch.zeros(self.num_heads, 2 * kernel_size - 1,
                        2 * kernel_size - 1))
        if not is_first:
            self.x_scale = LayerScale(ctx_dim, init_value=1)
            self.h_scale = LayerScale(ctx_dim, init_value=1)
        self.dwconv1 = ResDWConv(out_dim, 3)
        self.norm1 = LayerNorm2d(out_dim)
        self.fusion = nn.Sequential(*Fusion.build(out_dim, dim))
        self.weight_query = nn.Sequential(*ConvBN.build(dim, dim // 2))
        self.weight_key = nn.Sequential(
            nn.AdaptiveAvgPool2d(7),
            nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),
            nn.BatchNorm2d(dim // 2),
        )
        self.weight_proj = nn.Conv2d(49, kernel_size**2 + smk_size**2, 1)
        self.dyconv_proj = nn.Sequential(*ConvBN.build(dim, dim))
        self.lepe = nn.Sequential(*LargeKernelBN.build(dim, kernel_size,
                                                       deploy))
        self.se_layer = SEModule(dim)
        self.gate = nn.Sequential(*ConvBNAct.build(dim))
        self.proj = nn.Sequential(*BNConv.build(dim, out_dim))
        self.dwconv2 = ResDWConv(out_dim, 3)
        self.norm2 = LayerNorm2d(out_dim)
        self.mlp = nn.Sequential(*GRNMlp.build(out_dim, int(dim * mlp_ratio)))
        if ls_init_value is not None:
            self.ls1 = LayerScale(out_dim, ls_init_value)
            self.ls2 = LayerScale(out_dim, ls_init_value)
        else:
            self.ls1 = nn.Identity()
            self.ls2 = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def contmix(self, x: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
        """Dynamic-kernel aggregation of ``x`` (B, dim, H, W) with kernels
        generated from ``x_f`` (B, dim + ctx_dim, H, W)."""
        h, w = x.shape[2:]
        small, large = self.smk_size, self.kernel_size
        query, key = torch.split(x_f, [self.dim, self.ctx_dim], dim=1)
        query = self.weight_query(query) * self.scale
        key = self.weight_key(key)
        proj_w = self.weight_proj.weight.view(-1, 49)
        with _float32_logits(x) as fp32:
            q, kw = self._query_key(fp32(query), fp32(key), proj_w)
            tables = (self.weight_proj.bias, self.rpb1, self.rpb2)
            if self._recompute_weights(x):
                # the weights are recomputed in the backward, not kept
                return self._merge(*softmax_aggregate(
                    q, kw, *tables, *self._values(x), small, large))
            attn1, attn2 = contmix_weights(q, kw, *tables, h, w, small,
                                           large)
        return self.aggregate(x, attn1, attn2)

    def _recompute_weights(self, x: torch.Tensor) -> bool:
        """Whether training recomputes the ContMix weights in the backward
        (:func:`~overlock.ops.contmix_weights.softmax_aggregate`, with
        ``selective_cp``; not in the reference mode, nor when natten runs
        the aggregation, nor under ``torch.compile``, whose partitioner
        decides what to recompute)."""
        return (self.selective_cp and self.training and
                torch.is_grad_enabled() and not settings.reference and
                not torch.compiler.is_compiling() and not uses_natten(x))

    def _query_key(self, query: torch.Tensor, key: torch.Tensor,
                   proj_w: torch.Tensor):
        """``(q, kw)`` of the logits ``q @ kw``: ``(B, G, H*W, c)`` and ``(B,
        G, c, S^2 + K^2)``."""
        b, g = query.shape[0], self.num_heads
        query = query.reshape(b, g, -1, query.shape[2] * query.shape[3])
        key = key.reshape(b, g, -1, 49)
        return query.transpose(-2, -1), torch.matmul(key, proj_w.t())

    def logits(self, query: torch.Tensor, key: torch.Tensor,
               proj_w: torch.Tensor) -> torch.Tensor:
        """ContMix logits without their biases, ``(B, G, H*W, S^2 + K^2)``,
        from the scaled query ``(B, dim/2, H, W)``, the pooled key ``(B,
        dim/2, 7, 7)`` and ``weight_proj``'s ``(S^2 + K^2, 49)`` weight:
        the affinity (HW x 49) followed by the 49 -> S^2 + K^2 projection,
        computed in the cheaper order ``q^T (k W^T)``."""
        return torch.matmul(*self._query_key(query, key, proj_w))

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """``(2, B, G, H, W, c)``: the values of the two kernels."""
        b, c, h, w = x.shape
        g = self.num_heads
        return x.reshape(b, 2, g, c // (2 * g), h, w).permute(1, 0, 2, 4, 5, 3)

    def _merge(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The two ``(B, G, H, W, c)`` aggregations back to ``(B, dim, H,
        W)``."""
        b, g, h, w, c = x1.shape
        out = torch.cat([x1, x2], dim=1)  # B 2g H W c
        return out.permute(0, 1, 4, 2, 3).reshape(b, 2 * g * c, h, w)

    def aggregate(self, x: torch.Tensor, attn1: torch.Tensor,
                  attn2: torch.Tensor) -> torch.Tensor:
        """Both kernels applied to their halves of ``x`` (B, dim, H, W), with
        the normalised weights ``(B, G, H*W, S^2)`` and ``(B, G, H*W,
        K^2)``."""
        b, c, h, w = x.shape
        g = self.num_heads
        value = self._values(x)
        x1 = contmix_aggregate(attn1.view(b, g, h, w, -1),
                               value[0].contiguous(), self.smk_size)
        x2 = contmix_aggregate(attn2.view(b, g, h, w, -1),
                               value[1].contiguous(), self.kernel_size)
        return self._merge(x1, x2)

    def _forward(self, x, h_x, h_r):
        if not self.is_first:
            h_x = self.x_scale(h_x) + self.h_scale(h_r)
        x_f = self.dwconv1(torch.cat([x, h_x], dim=1))
        identity = x_f
        x_f = autocast_input(self.norm1(x_f))  # read by three convolutions
        fusion = Fusion(*self.fusion)
        x = fusion.grn(self._cheap(
            [fusion.dwconv, fusion.bn, fusion.act, fusion.fc], x_f))
        gating = ConvBNAct(*self.gate)
        gate = self._cheap([gating.bn, gating.act], gating.conv(x))
        lepe = LargeKernelBN(*self.lepe)
        lepe = self._cheap([lepe.large_kernel, lepe.bn], x)

        x = at_contmix_size(self.contmix, x, x_f, self.kernel_size)

        x = self.se_layer(self.dyconv_proj(x) + lepe)
        proj = BNConv(*self.proj)
        x = self._cheap([proj.bn, proj.conv], gate, x,
                        head=lambda g, y: proj.bn(g * y))
        x = _residual(identity, x, self.ls1, self.drop_path, self.res_scale)
        x = self.dwconv2(x)
        x = _residual(x, self._mlp(x), self.ls2, self.drop_path,
                      self.res_scale)
        if self.is_last:
            return x, None
        return tuple(torch.split(x, [self.dim, self.ctx_dim], dim=1))

    def _mlp(self, x):
        mlp = GRNMlp(*self.mlp)
        return _grn_mlp_tail(self, mlp, mlp.fc1(self.norm2(x)))

    def forward(self, x, h_x, h_r):
        if fused.enabled(self, x):
            return fused.dynconv_forward(self, x, h_x, h_r)
        return self._maybe_checkpoint(self._forward, x, h_x, h_r)
