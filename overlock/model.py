"""OverLoCK: an Overview-first-Look-Closely-next ConvNet with Context-Mixing
dynamic kernels (Lou & Yu, CVPR 2025, https://arxiv.org/abs/2502.20087).

One network for classification, detection and segmentation. Parameter names
and shapes follow the official implementation, so its ImageNet, COCO and ADE20K
checkpoints load with ``strict=True``.

The network has three parts:

* **Base-Net**: ``patch_embed1-3`` and ``blocks1-3`` (RepConvBlocks) give the
  stride 4 / 8 / 16 features;
* **Overview-Net**: ``patch_embed4`` and ``blocks4`` give a coarse stride-32
  context, projected by ``high_level_proj`` to ``C4 / 4`` channels;
* **Focus-Net**: ``sub_blocks3`` (stride 16) and ``sub_blocks4`` (stride 32,
  after ``patch_embedx``) are DynamicConvBlocks whose ContMix kernels are
  generated from the context, which they refine and carry along (the stage-3
  and stage-4 outputs have ``C + C4 / 4`` channels).
"""
import contextlib
import copy
import functools
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .ops import (DWConv2d, LargeKernelDWConv2d, _is_channels_last,
                  aggregate_window_major, bn_affine, conv_act,
                  contmix_aggregate, depthwise_conv2d, dilate_kernel,
                  fuse_conv_bn, neighborhood_bias_index, reference_mode,
                  spatial_l2_norm)

try:  # timm >= 0.9
    from timm.layers import DropPath
except ImportError:  # pragma: no cover
    from timm.models.layers import DropPath

logger = logging.getLogger(__name__)

__all__ = ['OverLoCK', 'ARCH_SETTINGS', 'DILATED_BRANCHES',
           'set_fast_inference']

_fast_inference = os.environ.get('OVERLOCK_DISABLE_FAST_INFERENCE', '').strip(
).lower() not in ('1', 'true', 'yes', 'on')


def set_fast_inference(enabled: bool) -> None:
    """Allow (default) or forbid the fused inference path.

    In eval mode without autograd on CPU, every block runs with its
    BatchNorms, LayerScales, identity shortcuts of the 3x3 convolutions and
    GRN shifts folded into the neighbouring convolutions (cached until a
    weight or statistic changes), activations fused into the convolutions,
    element-wise work done in place, and the features kept channels-last.
    Outputs are equal to the plain path to float rounding. Also set by the
    environment variable ``OVERLOCK_DISABLE_FAST_INFERENCE=1``.
    """
    global _fast_inference
    _fast_inference = bool(enabled)


def _fast_path(module: nn.Module, x: torch.Tensor) -> bool:
    return (_fast_inference and not reference_mode() and not module.training
            and not torch.is_grad_enabled() and x.device.type == 'cpu'
            and x.dtype in (torch.float32, torch.float64)
            and not _exporting())


def _exporting() -> bool:
    """Tracing, scripting, exporting or compiling: keep to portable ops (the
    fused path's oneDNN post-ops exist only in eager CPU PyTorch)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and compiler.is_compiling():
        return True
    onnx = getattr(torch, 'onnx', None)
    return bool(onnx is not None and onnx.is_in_onnx_export())

#: Hyper-parameters of the official models (``overlock_{xt,t,s,b}``).
ARCH_SETTINGS: Dict[str, dict] = {
    'xt': dict(
        depths=[2, 2, 3, 2],
        sub_depths=[6, 2],
        embed_dims=[56, 112, 256, 336],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[4, 6],
        sub_mlp_ratios=[3, 3]),
    't': dict(
        depths=[4, 4, 6, 2],
        sub_depths=[12, 2],
        embed_dims=[64, 128, 256, 512],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[4, 8],
        sub_mlp_ratios=[3, 3]),
    's': dict(
        depths=[6, 6, 8, 3],
        sub_depths=[16, 3],
        embed_dims=[64, 128, 320, 512],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[8, 16],
        sub_mlp_ratios=[3, 3]),
    'b': dict(
        depths=[8, 8, 10, 4],
        sub_depths=[20, 4],
        embed_dims=[80, 160, 384, 576],
        kernel_sizes=[17, 15, 13, 7],
        mlp_ratios=[4, 4, 4, 4],
        sub_num_heads=[6, 9],
        sub_mlp_ratios=[3, 3]),
}

#: Fields shared by all official archs; an arch dict may override them.
ARCH_DEFAULTS = dict(
    ls_init_values=[None, None, 1., 1.], res_scale=True, smk_size=5)

#: ``kernel size -> ((branch kernel, dilation), ...)`` of the dilated
#: re-parameterisable branches (UniRepLKNet's defaults, as used upstream).
DILATED_BRANCHES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


# --------------------------------------------------------------------------
# Small layers
# --------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Per-channel scale and shift (stored as a grouped 1x1 convolution)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return torch.addcmul(
            self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) for ``(N, C, H, W)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def scale(self, x):
        """The per-sample, per-channel factor: ``GRN(x) = x * scale + beta``."""
        gx = spatial_l2_norm(x)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return torch.addcmul(torch.ones_like(self.gamma), self.gamma, nx)

    def forward(self, x):
        if reference_mode():  # as the official code
            gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
            nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
            return x + self.beta + self.gamma * nx * x
        # x + beta + gamma * nx * x, in one pass over x
        return torch.addcmul(self.beta, x, self.scale(x))


class SEModule(nn.Module):
    """Squeeze-and-excitation with a sigmoid gate."""

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        hidden = max(16, dim // reduction)
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.proj(x)


class ResDWConv(nn.Conv2d):
    """``x + DWConv(x)``."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def fused_weight(self) -> torch.Tensor:
        """The kernel with the identity shortcut added to its centre tap:
        ``x + DWConv(x)`` is one convolution."""
        return _with_identity(self.weight)

    def forward(self, x):
        if reference_mode():  # as the official code
            return x + depthwise_conv2d(x, self.weight, self.bias,
                                        self.padding[0])
        return depthwise_conv2d(x, self.fused_weight(), self.bias,
                                self.padding[0])


def _with_identity(weight: torch.Tensor) -> torch.Tensor:
    k = weight.shape[-1]
    delta = torch.zeros_like(weight)
    delta[:, :, k // 2, k // 2] = 1
    return weight + delta


def _fold_bn_before(conv: nn.Conv2d,
                    bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv(bn(x))`` as one 1x1 convolution (eval-mode BN)."""
    scale, shift = bn_affine(bn)
    w = conv.weight
    bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    return w * scale.view(1, -1, 1, 1), bias + w.flatten(1) @ shift


class _InferenceCache:
    """Fused inference weights, rebuilt when a parameter or buffer of the
    module changes (``data_ptr`` and version counter of every tensor)."""

    def _inference_params(self) -> dict:
        tensors = list(self.parameters()) + list(self.buffers())
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        cache = self.__dict__.get('_fused_cache')
        if cache is None or cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                cache = (key, self._build_inference_params())
            self.__dict__['_fused_cache'] = cache
        return cache[1]


def _mlp_params(mlp: Sequence[nn.Module], ls: nn.Module,
                res_scale: bool) -> dict:
    """Fused weights of ``conv1x1 -> GELU -> ResDWConv -> GRN -> conv1x1``
    followed by the residual ``ls(x) + mlp`` (``res_scale``) or
    ``x + ls(mlp)``."""
    fc1, _, dw, grn, fc2 = mlp[:5]
    w2 = fc2.weight
    b2 = fc2.bias + w2.flatten(1) @ grn.beta.flatten()  # GRN's shift
    res_w = None
    if isinstance(ls, LayerScale):
        lw, lb = ls.weight.flatten(), ls.bias
        if res_scale:
            res_w, b2 = lw.view(1, -1, 1, 1), b2 + lb
        else:
            w2, b2 = w2 * lw.view(-1, 1, 1, 1), b2 * lw + lb
    return dict(fc1_w=fc1.weight, fc1_b=fc1.bias, dw_w=dw.fused_weight(),
                dw_b=dw.bias, grn=grn, fc2_w=w2, fc2_b=b2, res_w=res_w)


def _mlp_forward(y: torch.Tensor, p: dict, residual: torch.Tensor):
    h = conv_act(y, p['fc1_w'], p['fc1_b'], act='gelu')
    h = conv_act(h, p['dw_w'], p['dw_b'], 1, h.shape[1])
    h.mul_(p['grn'].scale(h))
    if p['res_w'] is None:
        return conv_act(h, p['fc2_w'], p['fc2_b'], add=residual)
    return conv_act(h, p['fc2_w'], p['fc2_b']).addcmul_(residual, p['res_w'])


def conv_bn(in_dim: int, out_dim: int, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_dim))


def make_stem(in_channels: int, dim: int) -> nn.Sequential:
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, half, 3, 2, 1, bias=False),
        nn.BatchNorm2d(half),
        nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1, bias=False),
        nn.BatchNorm2d(half),
        nn.GELU(),
        nn.Conv2d(half, dim, 3, 2, 1, bias=False),
        nn.BatchNorm2d(dim),
        nn.GELU(),
        nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
        nn.BatchNorm2d(dim),
    )


class DilatedReparamBlock(_InferenceCache, nn.Module):
    """Large-kernel depthwise conv + BN, with parallel dilated small-kernel
    branches (UniRepLKNet) that :meth:`reparameterize` folds into one kernel.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f'kernel size {kernel_size} has no dilated re-param branches; '
                f'use one of {sorted(DILATED_BRANCHES)}')
        self.kernel_size = kernel_size
        self.branches = DILATED_BRANCHES[kernel_size]
        self.lk_origin = LargeKernelDWConv2d(channels, kernel_size, bias=deploy)
        self.deploy = deploy
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels)
            for k, r in self.branches:
                self.add_module(f'dil_conv_k{k}_{r}',
                                DWConv2d(channels, k, dilation=r, bias=False))
                self.add_module(f'dil_bn_k{k}_{r}', nn.BatchNorm2d(channels))

    def forward(self, x):
        if self.deploy:
            return self.lk_origin(x)
        if not self.training and not torch.is_grad_enabled() and \
                not reference_mode():
            # inference: one convolution with the merged kernel (what
            # reparameterize() makes permanent), cached until a weight or
            # statistic changes
            weight, bias = self._inference_params()
            return self.lk_origin._conv(x, weight, bias)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            conv = getattr(self, f'dil_conv_k{k}_{r}')
            bn = getattr(self, f'dil_bn_k{k}_{r}')
            out = out + bn(conv(x))
        return out

    def _merged_kernel(self):
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None,
                                    self.origin_bn)
        for k, r in self.branches:
            conv = getattr(self, f'dil_conv_k{k}_{r}')
            bn = getattr(self, f'dil_bn_k{k}_{r}')
            w, b = fuse_conv_bn(conv.weight, None, bn)
            w = dilate_kernel(w, r)
            pad = (self.kernel_size - w.shape[-1]) // 2
            weight = weight + F.pad(w, [pad] * 4)
            bias = bias + b
        return weight, bias

    def _build_inference_params(self):
        return self._merged_kernel()

    def merged_kernel(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single convolution equal to this block in
        eval mode."""
        if self.deploy:
            return self.lk_origin.weight, self.lk_origin.bias
        return self._merged_kernel()

    def merged_kernel_bn(self, bn: nn.BatchNorm2d):
        """:meth:`merged_kernel` with a following eval-mode BN folded in."""
        return fuse_conv_bn(*self.merged_kernel(), bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BNs and dilated branches into ``lk_origin`` (in place)."""
        if self.deploy:
            return
        weight, bias = self._merged_kernel()
        merged = LargeKernelDWConv2d(
            weight.shape[0], self.kernel_size, bias=True).to(weight)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')
        self.__dict__.pop('_fused_cache', None)
        self.deploy = True


class _KeepRunningStats:
    """Restores the running statistics of the BatchNorms under ``module``
    after a checkpointed segment is recomputed in the backward, so that each
    training step updates them once (a recomputation would update them
    twice)."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.bns = [m for mod in modules for m in mod.modules()
                    if isinstance(m, _BatchNorm) and m.training
                    and m.track_running_stats]

    def __enter__(self):
        self.saved = [[t.clone() for t in (m.running_mean, m.running_var,
                                           m.num_batches_tracked)]
                      for m in self.bns]

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, (mean, var, n) in zip(self.bns, self.saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
        self.saved = None


def _recompute(fn, modules, *args, preserve_rng_state=False):
    """``fn(*args)`` whose intermediate tensors are recomputed in the
    backward instead of stored (BatchNorm statistics updated once)."""
    return checkpoint(
        fn, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
        context_fn=lambda: (contextlib.nullcontext(),
                            _KeepRunningStats(modules)))


class _CheckpointMixin:
    with_cp = False
    selective_cp = True

    def _maybe_checkpoint(self, fn, x, *args):
        if self.with_cp and self.training and x.requires_grad:
            # DropPath is inside: replay its random draws
            return _recompute(fn, [self], x, *args, preserve_rng_state=True)
        return fn(x, *args)

    def _cheap(self, fn, *args, modules=None):
        """Run a cheap segment (norms, activations, depthwise convolutions):
        while training, its outputs are recomputed in the backward rather
        than kept, unless ``selective_cp`` is off (or the whole block is
        checkpointed)."""
        if self.selective_cp and not self.with_cp and self.training and \
                torch.is_grad_enabled():
            return _recompute(fn, modules if modules is not None else [fn],
                              *args)
        return fn(*args)


class RepConvBlock(_CheckpointMixin, _InferenceCache, nn.Module):
    """Base-Net / Overview-Net block: large-kernel conv + SE + GRN MLP."""

    def __init__(self,
                 dim: int,
                 kernel_size: int = 7,
                 mlp_ratio: float = 4,
                 ls_init_value: Optional[float] = None,
                 res_scale: bool = False,
                 drop_path: float = 0.,
                 deploy: bool = False,
                 with_cp: bool = False):
        super().__init__()
        self.res_scale = res_scale
        self.with_cp = with_cp
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim, 3)
        self.proj = nn.Sequential(
            LayerNorm2d(dim),
            DilatedReparamBlock(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
            SEModule(dim),
            nn.Conv2d(dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden, 3),
            GRN(hidden),
            nn.Conv2d(hidden, dim, 1),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = LayerScale(dim, ls_init_value) \
            if ls_init_value is not None else nn.Identity()

    def _branch(self, x):
        """``proj`` without its DropPath; LN -> large kernel -> BN -> SE and
        GELU -> ResDWConv -> GRN are recomputed in the backward."""
        y = self._cheap(self.proj[:4], x)
        h = self._cheap(self.proj[5:8], self.proj[4](y))
        return self.proj[8](h)

    def _forward(self, x):
        x = self.dwconv(x)
        if self.res_scale:
            return self.ls(x) + self.proj[9](self._branch(x))
        return x + self.proj[9](self.ls(self._branch(x)))

    def _build_inference_params(self) -> dict:
        rep, bn = self.proj[1:3]
        lk_w, lk_b = rep.merged_kernel_bn(bn)
        p = _mlp_params(self.proj[4:9], self.ls, self.res_scale)
        p.update(res_dw_w=self.dwconv.fused_weight(), res_dw_b=self.dwconv.bias,
                 lk_w=lk_w, lk_b=lk_b)
        return p

    def _forward_fused(self, x):
        p = self._inference_params()
        x = conv_act(x, p['res_dw_w'], p['res_dw_b'], 1, x.shape[1])
        y = self.proj[1].lk_origin._conv(self.proj[0](x), p['lk_w'],
                                         p['lk_b'])
        y.mul_(self.proj[3].proj(y))  # SE
        return _mlp_forward(y, p, residual=x)

    def forward(self, x):
        if _fast_path(self, x):
            return self._forward_fused(x)
        return self._maybe_checkpoint(self._forward, x)


def _softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """In-place softmax (no autograd): on CPU 3-4x faster than
    ``Tensor.softmax`` along a non-innermost axis."""
    x.sub_(x.amax(dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim, keepdim=True))


@functools.lru_cache(maxsize=64)
def _bias_index(height: int, width: int, kernel_size: int,
                device: torch.device) -> torch.Tensor:
    return neighborhood_bias_index(height, width, kernel_size, device)


def contmix_size(height: int, width: int,
                 kernel_size: int) -> Tuple[int, int]:
    """Size at which ContMix runs: maps smaller than the kernel are enlarged
    (keeping the aspect ratio, truncating as upstream does)."""
    if min(height, width) >= kernel_size:
        return height, width
    if height < width:
        return kernel_size, int(kernel_size / height * width)
    return int(kernel_size / width * height), kernel_size


class DynamicConvBlock(_CheckpointMixin, _InferenceCache, nn.Module):
    """Focus-Net block with Context-Mixing dynamic kernels (ContMix).

    Each pixel's two depthwise kernels (``smk_size`` and ``kernel_size``) are
    computed from its affinity with a 7x7 pooled summary of the context,
    plus a relative-position bias, softmax-normalised, then applied to its
    neighbourhood.
    """

    def __init__(self,
                 dim: int,
                 ctx_dim: int,
                 kernel_size: int = 7,
                 smk_size: int = 5,
                 num_heads: int = 2,
                 mlp_ratio: float = 4,
                 ls_init_value: Optional[float] = None,
                 res_scale: bool = False,
                 drop_path: float = 0.,
                 is_first: bool = False,
                 is_last: bool = False,
                 deploy: bool = False,
                 with_cp: bool = False):
        super().__init__()
        ctx_dim = ctx_dim // 4
        out_dim = dim + ctx_dim
        hidden = int(dim * mlp_ratio)
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
        self.fusion = nn.Sequential(
            DWConv2d(out_dim, 3),
            nn.BatchNorm2d(out_dim),
            nn.GELU(),
            nn.Conv2d(out_dim, dim, 1),
            GRN(dim),
        )
        self.weight_query = nn.Sequential(
            nn.Conv2d(dim, dim // 2, 1, bias=False), nn.BatchNorm2d(dim // 2))
        self.weight_key = nn.Sequential(
            nn.AdaptiveAvgPool2d(7),
            nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),
            nn.BatchNorm2d(dim // 2),
        )
        self.weight_proj = nn.Conv2d(49, kernel_size**2 + smk_size**2, 1)
        self.dyconv_proj = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.lepe = nn.Sequential(
            DilatedReparamBlock(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
        )
        self.se_layer = SEModule(dim)
        self.gate = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.SiLU(),
        )
        self.proj = nn.Sequential(
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, out_dim, 1),
        )
        self.dwconv2 = ResDWConv(out_dim, 3)
        self.norm2 = LayerNorm2d(out_dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(out_dim, hidden, 1),
            nn.GELU(),
            ResDWConv(hidden, 3),
            GRN(hidden),
            nn.Conv2d(hidden, out_dim, 1),
        )
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
        b, c, h, w = x.shape
        g = self.num_heads
        small, large = self.smk_size, self.kernel_size
        query, key = torch.split(x_f, [self.dim, self.ctx_dim], dim=1)
        query = self.weight_query(query) * self.scale
        key = self.weight_key(key)
        query = query.reshape(b, g, -1, h * w)  # B g c HW
        key = key.reshape(b, g, -1, 49)  # B g c 49
        # affinity (HW x 49) followed by the 49 -> S^2 + K^2 projection,
        # computed in the cheaper order: q^T (k W^T) + bias.
        proj_w = self.weight_proj.weight.view(-1, 49)
        attn = torch.matmul(
            query.transpose(-2, -1), torch.matmul(key, proj_w.t()))
        attn = attn + self.weight_proj.bias
        attn1, attn2 = torch.split(attn, [small * small, large * large], -1)
        attn1 = attn1 + self.rpb1.flatten(1)[:, _bias_index(
            h, w, small, attn.device)]
        attn2 = attn2 + self.rpb2.flatten(1)[:, _bias_index(
            h, w, large, attn.device)]
        attn1 = attn1.softmax(dim=-1).view(b, g, h, w, -1)
        attn2 = attn2.softmax(dim=-1).view(b, g, h, w, -1)
        value = x.reshape(b, 2, g, c // (2 * g), h, w).permute(1, 0, 2, 4, 5, 3)
        x1 = contmix_aggregate(attn1, value[0].contiguous(), small)
        x2 = contmix_aggregate(attn2, value[1].contiguous(), large)
        out = torch.cat([x1, x2], dim=1)  # B 2g H W c
        return out.permute(0, 1, 4, 2, 3).reshape(b, c, h, w)

    def _forward(self, x, h_x, h_r):
        height, width = x.shape[2:]
        if not self.is_first:
            h_x = self.x_scale(h_x) + self.h_scale(h_r)
        x_f = self.dwconv1(torch.cat([x, h_x], dim=1))
        identity = x_f
        x_f = self.norm1(x_f)
        fusion = self.fusion
        x = fusion[4](fusion[3](self._cheap(fusion[:3], x_f)))
        gate = self._cheap(self.gate[1:], self.gate[0](x))
        lepe = self._cheap(self.lepe, x)

        size = contmix_size(height, width, self.kernel_size)
        if size != (height, width):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            x_f = F.interpolate(
                x_f, size=size, mode='bilinear', align_corners=False)
            x = F.adaptive_avg_pool2d(self.contmix(x, x_f), (height, width))
        else:
            x = self.contmix(x, x_f)

        x = self.se_layer(self.dyconv_proj(x) + lepe)
        x = self.proj[1](self._cheap(self._gated_norm, gate, x,
                                     modules=[self.proj[0]]))
        if self.res_scale:
            x = self.ls1(identity) + self.drop_path(x)
        else:
            x = identity + self.drop_path(self.ls1(x))
        x = self.dwconv2(x)
        if self.res_scale:
            x = self.ls2(x) + self.drop_path(self._mlp(x))
        else:
            x = x + self.drop_path(self.ls2(self._mlp(x)))
        if self.is_last:
            return x, None
        return tuple(torch.split(x, [self.dim, self.ctx_dim], dim=1))

    def _gated_norm(self, gate, x):
        return self.proj[0](gate * x)

    def _mlp(self, x):
        """norm2 -> mlp; GELU -> ResDWConv -> GRN recomputed in the
        backward."""
        mlp = self.mlp
        h = self._cheap(mlp[1:4], mlp[0](self.norm2(x)))
        return mlp[4](h)

    # ----------------------------------------------------- fused inference
    def _build_inference_params(self) -> dict:
        dwc, bn, act, fc, grn = self.fusion
        proj_bn, proj = self.proj
        p = _mlp_params(self.mlp, self.ls2, self.res_scale)
        f_w, f_b = fuse_conv_bn(dwc.weight, dwc.bias, bn)
        q_w, q_b = fuse_conv_bn(self.weight_query[0].weight, None,
                                self.weight_query[1])
        out_w, out_b = _fold_bn_before(proj, proj_bn)
        res1_w = None
        if isinstance(self.ls1, LayerScale):
            lw, lb = self.ls1.weight.flatten(), self.ls1.bias
            if self.res_scale:
                res1_w, out_b = lw.view(1, -1, 1, 1), out_b + lb
            else:
                out_w, out_b = out_w * lw.view(-1, 1, 1, 1), out_b * lw + lb
        p.update(
            dw1_w=self.dwconv1.fused_weight(), dw1_b=self.dwconv1.bias,
            dw2_w=self.dwconv2.fused_weight(), dw2_b=self.dwconv2.bias,
            fus_w=f_w, fus_b=f_b, fc_w=fc.weight, fc_b=fc.bias, grn1=grn,
            q_w=q_w * self.scale, q_b=q_b * self.scale,
            dyn=fuse_conv_bn(self.dyconv_proj[0].weight, None,
                             self.dyconv_proj[1]),
            lepe=self.lepe[0].merged_kernel_bn(self.lepe[1]),
            gate=fuse_conv_bn(self.gate[0].weight, None, self.gate[1]),
            out_w=out_w, out_b=out_b, res1_w=res1_w, attn_bias={})
        return p

    def _attn_bias(self, p: dict, height: int, width: int) -> torch.Tensor:
        """weight_proj bias + relative-position biases, ``(G, S^2 + K^2,
        H * W)``, cached per map size."""
        bias = p['attn_bias'].get((height, width))
        if bias is None:
            dev = self.rpb1.device
            b1 = self.rpb1.flatten(1)[:, _bias_index(height, width,
                                                     self.smk_size, dev)]
            b2 = self.rpb2.flatten(1)[:, _bias_index(height, width,
                                                     self.kernel_size, dev)]
            bias = torch.cat([b1, b2], -1) + self.weight_proj.bias
            bias = bias.transpose(1, 2).contiguous()
            if len(p['attn_bias']) >= 16:
                p['attn_bias'].clear()
            p['attn_bias'][(height, width)] = bias
        return bias

    def _contmix_fused(self, x, x_f, p):
        b, c, h, w = x.shape
        g, small, large = self.num_heads, self.smk_size, self.kernel_size
        query, key = torch.split(x_f, [self.dim, self.ctx_dim], dim=1)
        query = conv_act(query, p['q_w'], p['q_b']).reshape(b, g, -1, h * w)
        key = self.weight_key(key).reshape(b, g, -1, 49)
        # (S^2 + K^2, 49) x (49, c) then x (c, HW): window-major attention
        kw = torch.matmul(self.weight_proj.weight.view(-1, 49),
                          key.transpose(-2, -1))
        attn = torch.matmul(kw, query).add_(self._attn_bias(p, h, w))
        attn = attn.view(b, g, -1, h, w)
        # (B, G, H, W, c) values of the two kernels; the aggregation is
        # fastest on these contiguous blocks
        value = x.reshape(b, 2, g, c // (2 * g), h, w).permute(1, 0, 2, 4, 5, 3)
        out = torch.zeros(value.shape, dtype=x.dtype, device=x.device)
        for i, (k, sl) in enumerate(((small, slice(0, small * small)),
                                     (large, slice(small * small, None)))):
            a = _softmax_(attn[:, :, sl], dim=2)
            aggregate_window_major(a, value[i].contiguous(), k, out[i])
        # (2, B, G, H, W, c) -> channels-last (B, C, H, W)
        out = out.permute(1, 3, 4, 0, 2, 5).reshape(b, h, w, c)
        return out.permute(0, 3, 1, 2)

    def _forward_fused(self, x, h_x, h_r):
        p = self._inference_params()
        height, width = x.shape[2:]
        if not self.is_first:
            h_x = self.x_scale(h_x).add_(self.h_scale(h_r))
        x_f = torch.cat([x, h_x], dim=1)
        identity = conv_act(x_f, p['dw1_w'], p['dw1_b'], 1, x_f.shape[1])
        x_f = self.norm1(identity)
        x = conv_act(x_f, p['fus_w'], p['fus_b'], 1, x_f.shape[1], act='gelu')
        x = conv_act(x, p['fc_w'], p['fc_b'])
        grn = p['grn1']
        x = x.mul_(grn.scale(x)).add_(grn.beta)
        gate = conv_act(x, *p['gate'], act='swish')
        lepe = self.lepe[0].lk_origin._conv(x, *p['lepe'])

        size = contmix_size(height, width, self.kernel_size)
        if size != (height, width):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            x_f = F.interpolate(
                x_f, size=size, mode='bilinear', align_corners=False)
            x = F.adaptive_avg_pool2d(
                self._contmix_fused(x, x_f, p), (height, width))
        else:
            x = self._contmix_fused(x, x_f, p)
        fmt = torch.channels_last if _is_channels_last(x) else \
            torch.contiguous_format
        x = conv_act(x, *p['dyn'], add=lepe.contiguous(memory_format=fmt))
        x.mul_(self.se_layer.proj(x)).mul_(gate)
        if p['res1_w'] is None:
            x = conv_act(x, p['out_w'], p['out_b'], add=identity)
        else:
            x = conv_act(x, p['out_w'], p['out_b']).addcmul_(
                identity, p['res1_w'])
        x = conv_act(x, p['dw2_w'], p['dw2_b'], 1, x.shape[1])
        x = _mlp_forward(self.norm2(x), p, residual=x)
        if self.is_last:
            return x, None
        return tuple(torch.split(x, [self.dim, self.ctx_dim], dim=1))

    def forward(self, x, h_x, h_r):
        if _fast_path(self, x):
            return self._forward_fused(x, h_x, h_r)
        return self._maybe_checkpoint(self._forward, x, h_x, h_r)


class CTXDownsample(nn.Module):
    """Stride-2 downsampling of the Focus-Net features and their context."""

    def __init__(self, dim: int, h_dim: int):
        super().__init__()
        self.x_proj = conv_bn(dim, h_dim)
        self.h_proj = conv_bn(h_dim // 4, h_dim // 4)

    def forward(self, x, ctx):
        return self.x_proj(x), self.h_proj(ctx)


# --------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------
def _resolve_arch(arch: Union[str, dict]) -> dict:
    if isinstance(arch, str):
        key = arch.lower()
        if key.startswith('overlock_'):
            key = key[len('overlock_'):]
        if key not in ARCH_SETTINGS:
            raise ValueError(
                f'Unknown OverLoCK arch {arch!r}; valid names are '
                f'{sorted(ARCH_SETTINGS)}, or pass a dict with the fields '
                f'{sorted(ARCH_SETTINGS["t"])}.')
        cfg = copy.deepcopy(ARCH_SETTINGS[key])
    elif isinstance(arch, dict):
        required = set(ARCH_SETTINGS['t'])
        missing = sorted(required - set(arch))
        if missing:
            raise ValueError(f'The OverLoCK arch dict lacks the fields '
                             f'{missing}; it needs {sorted(required)}.')
        unknown = sorted(set(arch) - required - set(ARCH_DEFAULTS))
        if unknown:
            raise ValueError(
                f'Unknown fields {unknown} in the OverLoCK arch dict; valid '
                f'fields are {sorted(required | set(ARCH_DEFAULTS))}.')
        cfg = copy.deepcopy(dict(arch))
    else:
        raise TypeError(f'arch must be a name or a dict, got '
                        f'{type(arch).__name__}')
    for k, v in ARCH_DEFAULTS.items():
        cfg.setdefault(k, copy.deepcopy(v))
    _check_arch(cfg)
    return cfg


def _check_arch(cfg: dict) -> None:
    lengths = dict(
        depths=4, embed_dims=4, kernel_sizes=4, mlp_ratios=4,
        ls_init_values=4, sub_depths=2, sub_num_heads=2, sub_mlp_ratios=2)
    for name, n in lengths.items():
        value = cfg[name]
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f'arch field {name!r} must be a list of {n} '
                             f'values, got {value!r}')
    dims, heads = cfg['embed_dims'], cfg['sub_num_heads']
    if any(d <= 0 for d in cfg['depths']) or any(
            d <= 0 for d in cfg['sub_depths']):
        raise ValueError(f'depths and sub_depths must be positive, got '
                         f'{cfg["depths"]} and {cfg["sub_depths"]}')
    if dims[0] % 2:
        raise ValueError(f'embed_dims[0] must be even (the stem halves it), '
                         f'got {dims[0]}')
    if dims[3] % 4:
        raise ValueError(f'embed_dims[3] must be divisible by 4 (the context '
                         f'has embed_dims[3] // 4 channels), got {dims[3]}')
    for stage, dim, h in ((3, dims[2], heads[0]), (4, dims[3], heads[1])):
        if h <= 0 or dim % (4 * h):
            raise ValueError(
                f'stage {stage}: embed_dims {dim} must be divisible by 4 x '
                f'sub_num_heads ({h}): ContMix splits the channels into two '
                f'kernels x 2 x {h} groups. Change embed_dims or '
                f'sub_num_heads.')
    for k in cfg['kernel_sizes']:
        if k not in DILATED_BRANCHES:
            raise ValueError(f'kernel_sizes must be in '
                             f'{sorted(DILATED_BRANCHES)}, got {k}')
    smk = cfg['smk_size']
    if smk % 2 == 0 or smk < 3 or smk > min(cfg['kernel_sizes'][2:]):
        raise ValueError(
            f'smk_size must be odd, >= 3 and at most the stage-3/4 kernel '
            f'sizes {cfg["kernel_sizes"][2:]}, got {smk}')


class OverLoCK(nn.Module):
    """OverLoCK backbone (and ImageNet classifier).

    Args:
        arch (str | dict): ``'xt'``, ``'t'``, ``'s'`` or ``'b'`` (the official
            hyper-parameters, see :data:`ARCH_SETTINGS`), or a dict with the
            fields ``depths``, ``sub_depths``, ``embed_dims``,
            ``kernel_sizes``, ``mlp_ratios``, ``sub_num_heads``,
            ``sub_mlp_ratios`` and optionally ``ls_init_values``,
            ``res_scale``, ``smk_size``. Defaults to ``'t'``.
        in_channels (int): Input channels. Defaults to 3.
        fuse_overview (bool): Add the projected Overview-Net context to the
            stage-4 output (top-level ``h_proj`` and a fifth ``extra_norm``):
            the official *detection* backbone. ``False`` gives the official
            *segmentation* backbone. Ignored by classifiers. Defaults to True.
        out_indices (Sequence[int]): Stages (0-3) whose outputs are returned.
            Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): ``-1`` freezes nothing, ``0`` the stem, ``k``
            (1-4) the stem and stages 1..k with their output norms. Stage 3
            includes the Overview-Net it depends on. Defaults to -1.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training.
            Defaults to False.
        drop_path_rate (float): Stochastic depth rate, linearly increasing
            over all blocks. Defaults to 0.
        with_cp (bool): Activation checkpointing of every block while
            training. Defaults to False.
        selective_cp (bool): While training, recompute the cheap layers of
            each block (norms, activations, depthwise and large-kernel
            convolutions with their BatchNorms) in the backward instead of
            keeping their outputs: about 40% less activation memory for
            about 10% more time, same numbers. BatchNorm running statistics
            are updated once per step, as without recomputation. Defaults
            to True.
        deploy (bool): Build the re-parameterised form (no dilated branches).
            Defaults to False.
        num_classes (int): ``> 0`` builds the ImageNet classifier (upstream's
            ``head`` and ``aux_head``; no ``extra_norm``) whose forward returns
            logits. Defaults to 0.
        projection (int): Width of the classifier head. Defaults to 1024.
        use_ds (bool): Build the auxiliary (deep supervision) head of the
            classifier. Defaults to True.
    """

    def __init__(self,
                 arch: Union[str, dict] = 't',
                 in_channels: int = 3,
                 fuse_overview: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 selective_cp: bool = True,
                 deploy: bool = False,
                 num_classes: int = 0,
                 projection: int = 1024,
                 use_ds: bool = True):
        super().__init__()
        cfg = _resolve_arch(arch)
        self.arch_settings = cfg
        self.arch = arch if isinstance(arch, str) else 'custom'
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        if not out_indices or any(
                not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty sequence of '
                             f'stage indices in 0..3, got {out_indices}')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be an int in -1..4 (-1: '
                             f'nothing frozen, 4: all), got {frozen_stages}')
        if in_channels <= 0:
            raise ValueError(f'in_channels must be positive, got {in_channels}')

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.fuse_overview = fuse_overview and num_classes <= 0
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.deploy = deploy

        depths, sub_depths = cfg['depths'], cfg['sub_depths']
        dims, ks = cfg['embed_dims'], cfg['kernel_sizes']
        ls, res_scale = cfg['ls_init_values'], cfg['res_scale']
        ctx_dim = dims[3] // 4
        #: channels of the four stage outputs (stages 3-4 carry the context)
        self.channels = (dims[0], dims[1], dims[2] + ctx_dim, dims[3] + ctx_dim)
        self.strides = (4, 8, 16, 32)
        self.out_channels = tuple(self.channels[i] for i in out_indices)
        self.feature_info = [
            dict(num_chs=self.channels[i], reduction=self.strides[i],
                 module=f'stage{i + 1}') for i in out_indices
        ]
        self.num_features = self.channels[3]

        self.patch_embed1 = make_stem(in_channels, dims[0])
        self.patch_embed2 = conv_bn(dims[0], dims[1])
        self.patch_embed3 = conv_bn(dims[1], dims[2])
        self.patch_embed4 = conv_bn(dims[2], dims[3])
        self.high_level_proj = nn.Conv2d(dims[3], ctx_dim, 1)
        self.patch_embedx = CTXDownsample(dims[2], dims[3])

        dpr = torch.linspace(0, drop_path_rate, sum(depths) + sum(sub_depths),
                             device='cpu').tolist()
        offsets = [0, depths[0], sum(depths[:2]), sum(depths[:3])]
        for s in range(4):
            self.add_module(
                f'blocks{s + 1}',
                nn.ModuleList(
                    RepConvBlock(
                        dims[s], ks[s], cfg['mlp_ratios'][s], ls[s], res_scale,
                        dpr[offsets[s] + i], deploy, with_cp)
                    for i in range(depths[s])))
        for j, s in enumerate((2, 3)):
            start = sum(depths) + sum(sub_depths[:j])
            self.add_module(
                f'sub_blocks{s + 1}',
                nn.ModuleList(
                    DynamicConvBlock(
                        dims[s],
                        dims[3],
                        kernel_size=ks[s],
                        smk_size=cfg['smk_size'],
                        num_heads=cfg['sub_num_heads'][j],
                        mlp_ratio=cfg['sub_mlp_ratios'][j],
                        ls_init_value=ls[s],
                        res_scale=res_scale,
                        drop_path=dpr[start + i],
                        is_first=(s == 2 and i == 0),
                        is_last=(s == 3 and i == sub_depths[j] - 1),
                        deploy=deploy,
                        with_cp=with_cp) for i in range(sub_depths[j])))

        if num_classes > 0:
            if use_ds:
                self.aux_head = nn.Sequential(
                    nn.BatchNorm2d(dims[3]), nn.AdaptiveAvgPool2d(1),
                    nn.Conv2d(dims[3], num_classes, 1))
            self.head = nn.Sequential(
                nn.Conv2d(self.channels[3], projection, 1, bias=False),
                nn.BatchNorm2d(projection),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(projection, num_classes, 1),
            )
        else:
            norms = [LayerNorm2d(c) for c in self.channels]
            if self.fuse_overview:
                norms.append(LayerNorm2d(dims[3]))
                self.h_proj = nn.Sequential(
                    nn.Conv2d(dims[3], self.channels[3], 1),
                    LayerScale(self.channels[3], init_value=1e-5))
            self.extra_norm = nn.ModuleList(norms)

        self.selective_cp = selective_cp
        for m in self.modules():
            if isinstance(m, _CheckpointMixin):
                m.selective_cp = selective_cp

        self.init_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Random initialisation as upstream (truncated normal convs)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, _BatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.weight, m.init_value)
                nn.init.zeros_(m.bias)
            elif isinstance(m, GRN):
                nn.init.zeros_(m.gamma)
                nn.init.zeros_(m.beta)
            elif isinstance(m, DynamicConvBlock):
                nn.init.zeros_(m.rpb1)
                nn.init.zeros_(m.rpb2)

    # --------------------------------------------------------------- freezing
    def stage_modules(self, stage: int) -> List[nn.Module]:
        """Modules that belong to ``stage`` (0: stem, 1-4: the stages)."""
        norms = getattr(self, 'extra_norm', None)

        def norm(i):
            return [norms[i]] if norms is not None and i < len(norms) else []

        if stage == 0:
            return [self.patch_embed1]
        if stage == 1:
            return [self.blocks1] + norm(0)
        if stage == 2:
            return [self.patch_embed2, self.blocks2] + norm(1)
        if stage == 3:
            return [
                self.patch_embed3, self.blocks3, self.patch_embed4,
                self.blocks4, self.high_level_proj, self.sub_blocks3
            ] + norm(2)
        if stage == 4:
            mods = [self.patch_embedx, self.sub_blocks4] + norm(3) + norm(4)
            if hasattr(self, 'h_proj'):
                mods.append(self.h_proj)
            return mods
        raise ValueError(f'stage must be in 0..4, got {stage}')

    def _freeze_stages(self) -> None:
        for stage in range(self.frozen_stages + 1):
            for m in self.stage_modules(stage):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # --------------------------------------------------------------- deploy
    def reparameterize(self) -> 'OverLoCK':
        """Merge every dilated branch into its large kernel, in place.

        Eval-mode outputs are unchanged (up to float rounding); the model then
        has the keys of the official ``*_reparam`` checkpoints.
        """
        for m in self.modules():
            if isinstance(m, DilatedReparamBlock):
                m.reparameterize()
        self.deploy = True
        return self

    # --------------------------------------------------------------- forward
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f'OverLoCK expects a 4-D (N, C, H, W) tensor, got '
                             f'{shape}; add a batch axis with x[None] for a '
                             f'single image.')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'OverLoCK was built for {self.in_channels} input channels but '
                f'got {x.shape[1]} (input shape {tuple(x.shape)}); pass images '
                f'as (N, C, H, W) or set in_channels.')

    def forward_features(self, x: torch.Tensor,
                         out_indices: Sequence[int] = (0, 1, 2, 3)
                         ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor]:
        """Run the network as far as the last of ``out_indices`` needs.

        Returns a dict ``{stage: output}`` and the Overview-Net context
        (stride 32, ``embed_dims[3]`` channels). In the backbone flavours the
        outputs pass through ``extra_norm`` and, as upstream, stage 3 consumes
        the *normalised* stage-2 output.
        """
        norms = getattr(self, 'extra_norm', None)
        last = max(out_indices)
        feats = {}
        x = self.patch_embed1(x)
        for blk in self.blocks1:
            x = blk(x)
        if 0 in out_indices:
            feats[0] = norms[0](x) if norms is not None else x
        if last == 0:
            return feats, None
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x)
        if norms is not None:
            x = norms[1](x)
        feats[1] = x
        if last == 1:
            return feats, None

        x = self.patch_embed3(x)
        for blk in self.blocks3:
            x = blk(x)
        overview = self.patch_embed4(x)
        for blk in self.blocks4:
            overview = blk(overview)
        ctx_ori = self.high_level_proj(overview)
        ctx_up = F.interpolate(
            ctx_ori, size=x.shape[2:], mode='bilinear', align_corners=False)
        ctx = ctx_up
        for blk in self.sub_blocks3:
            x, ctx = blk(x, ctx, ctx_up)
        if 2 in out_indices:
            out = torch.cat([x, ctx], dim=1)
            feats[2] = norms[2](out) if norms is not None else out
        if last == 2:
            return feats, overview
        x, ctx = self.patch_embedx(x, ctx)
        for blk in self.sub_blocks4:
            x, ctx = blk(x, ctx, ctx_ori)
        if norms is not None:
            x = norms[3](x)
            if self.fuse_overview:
                x = x + self.h_proj(norms[4](overview))
        feats[3] = x
        return feats, overview

    def forward(self, x: torch.Tensor):
        """Backbone: a tuple of the ``out_indices`` stage outputs.

        Classifier (``num_classes > 0``): logits ``(N, num_classes)``; in
        training mode with ``use_ds`` a tuple ``(logits, aux_logits)``.
        """
        self._check_input(x)
        fmt = None
        if _fast_path(self, x):
            # the fused inference path runs channels-last (faster on CPU
            # for every layer but a few large-kernel ones, which convert)
            fmt = torch.channels_last if _is_channels_last(x) else \
                torch.contiguous_format
            x = x.contiguous(memory_format=torch.channels_last)
        if self.num_classes > 0:
            feats, overview = self.forward_features(x, (3, ))
            logits = self.head(feats[3]).flatten(1)
            if self.training and hasattr(self, 'aux_head'):
                return logits, self.aux_head(overview).flatten(1)
            return logits
        feats, _ = self.forward_features(x, self.out_indices)
        if fmt is not None:
            return tuple(feats[i].contiguous(memory_format=fmt)
                         for i in self.out_indices)
        return tuple(feats[i] for i in self.out_indices)
