"""Layers of OverLoCK, and the named views of upstream's ``nn.Sequential``s.

Upstream keeps several groups of layers in ``nn.Sequential`` containers, so
their positions are part of the checkpoint keys (``proj.4.weight``). Each
such group is declared here once, as a ``NamedTuple`` whose field order *is*
the order in the container: ``GRNMlp(*block.mlp)`` names the positions, and
``GRNMlp.build(...)`` creates the layers in that order. The plain forward,
the recomputation segments and the fused inference path all use the names.
"""
import contextlib
from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import settings
from .ops.cpu import spatial_l2_norm
from .ops.dwconv import depthwise_conv2d, dilate_kernel
from .ops.caching import cache_unless_compiling, outside_inference_mode
from .ops.dispatch import HALF_DTYPES, needs_grad
from .reparam import (cached, exporting, fuse_conv_bn, use_folded,
                      with_identity)

try:  # timm >= 0.9
    from timm.layers import DropPath
except ImportError:  # pragma: no cover
    from timm.models.layers import DropPath

__all__ = [
    'LayerNorm2d', 'layer_norm_2d', 'LayerScale', 'GRN', 'SEModule',
    'ResDWConv', 'DWConv2d',
    'LargeKernelDWConv2d', 'DilatedReparamBlock', 'DILATED_BRANCHES',
    'DropPath', 'OUT_NORMS', 'make_out_norm', 'conv_bn', 'make_stem',
    'GRNMlp', 'RepConvProj', 'Fusion', 'ConvBN', 'BNConv', 'ConvBNAct',
    'LargeKernelBN', 'chain', 'autocast_input'
]

#: ``kernel size -> ((branch kernel, dilation), ...)`` of the dilated
#: re-parameterisable branches (UniRepLKNet's defaults, as used upstream).
DILATED_BRANCHES = {
    19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


def chain(modules, x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied in sequence (a ModuleList or a list)."""
    for m in modules:
        x = m(x)
    return x


def keep_half(x: torch.Tensor):
    """A context in which an operation on ``x``, a half-precision map under
    autocast, runs in ``x``'s dtype (or, with float32 operands, reads ``x``
    as it goes) instead of on a float32 copy of ``x``: GPU autocast makes
    one for the ops of its float32 list (``layer_norm``, ``sum``) and
    promotions (``addcmul`` with float32 parameters), a cast over the whole
    map, kept for the backward where the op needs its input. The kernels
    accumulate half inputs in float32. Otherwise a no-op context."""
    device = x.device.type
    if x.dtype in HALF_DTYPES and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in autocast's dtype when autocast is on for its device and
    ``x`` is float32 (a norm's output), else ``x``: one cast where each of
    the convolutions reading ``x`` would cast it again, and one cast of its
    gradient back in the backward instead of one per convolution (on a
    GPU each a kernel launch over the whole map)."""
    device = x.device.type
    if x.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


# --------------------------------------------------------------------------
# Small layers
# --------------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` tensor.

    On CPU the result is the channels-last view ``F.layer_norm`` leaves (the
    CPU convolutions pick their layout per shape). Elsewhere it is made
    contiguous: a channels-last tensor would make cuDNN run every following
    convolution channels-last, ~9x slower for the large depthwise kernels,
    and would keep them from the Triton kernels (which take NCHW).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)

    def forward(self, x):
        return layer_norm_2d(x, self.weight, self.bias, self.eps)


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """:class:`LayerNorm2d`'s forward with the given parameters.

    Under autocast off the CPU, a half-precision ``x`` is normalised in its
    own dtype (float32 statistics: the kernels accumulate in float32), not
    on the float32 copy GPU autocast would make, keep for the backward and
    return (its readers, convolutions, cast it back to half): ~180 MB less
    kept in an OverLoCK-T training step at 800x1216, batch 2, and a cast
    of the map each way replaced by two of the parameters. CPU autocast
    runs ``layer_norm`` in the input's dtype already."""
    device = x.device.type
    if device != 'cpu' and x.dtype in HALF_DTYPES and \
            torch.is_autocast_enabled(device):
        with keep_half(x):
            out = F.layer_norm(x.permute(0, 2, 3, 1), weight.shape,
                               weight.to(x.dtype), bias.to(x.dtype), eps)
    else:
        out = F.layer_norm(x.permute(0, 2, 3, 1), weight.shape, weight,
                           bias, eps)
    out = out.permute(0, 3, 1, 2)
    # on CPU the view (traced: contiguous, inductor lays out the graph)
    keep = device == 'cpu' and not torch.compiler.is_compiling()
    return out if keep else out.contiguous()


#: kinds of the backbone's output norms (``OverLoCK(out_norm=...)``)
OUT_NORMS = ('layer', 'group')


def make_out_norm(kind: str, dim: int) -> nn.Module:
    """A backbone output norm (``extra_norm``): ``'layer'`` normalises each
    position over the channels (upstream); ``'group'`` normalises each image
    over channels *and* positions (GroupNorm, one group), keeping the
    contrast between positions. Same parameters (``weight``, ``bias``)."""
    if kind == 'layer':
        return LayerNorm2d(dim)
    if kind == 'group':
        return nn.GroupNorm(1, dim, eps=1e-6)
    raise ValueError(f'out_norm must be one of {OUT_NORMS}, got {kind!r}')


class LayerScale(nn.Module):
    """Per-channel scale and shift (stored as a grouped 1x1 convolution)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        # a half x is read as it is (GPU autocast would keep a float32 copy
        # for the backward: ~340 MB in an OverLoCK-T step at 800x1216,
        # fp16); the float32 result is the same
        with keep_half(x):
            return torch.addcmul(self.bias.view(1, -1, 1, 1), x,
                                 self.weight.view(1, -1, 1, 1))


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) for ``(N, C, H, W)``:
    ``x + beta + gamma * x * nx``, ``nx`` the spatial L2 norm of ``x``
    divided by its mean over the channels (plus ``eps``)."""

    eps = 1e-6

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def scale(self, x):
        """The per-sample, per-channel factor: ``GRN(x) = x * scale + beta``
        (float32 for float16 / bfloat16 ``x``, see :func:`spatial_l2_norm`)."""
        return _grn_scale(spatial_l2_norm(x), self.gamma, self.eps)[2]

    def forward(self, x):
        if settings.reference:  # as the official code
            gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
            nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
            return x + self.beta + self.gamma * nx * x
        if needs_grad(x, self.gamma, self.beta):
            if not torch.compiler.is_compiling():
                return _GRNFunction.apply(x, self.gamma, self.beta, self.eps)
            # traced: autograd's formula, eps (GRN.eps) a literal (dynamo
            # failed on both in a recomputed segment with dynamic sizes)
            acc = torch.float32 if x.dtype in HALF_DTYPES else None
            gx = torch.linalg.vector_norm(x, 2, (2, 3), True, dtype=acc)
            scale = _grn_scale(gx, self.gamma, 1e-6)[2].to(x.dtype)
            return torch.addcmul(self.beta.to(x.dtype), x, scale)
        # x + beta + gamma * nx * x, in one pass over x (in x's dtype: under
        # autocast the float32 factor and shift are rounded to it, not x
        # promoted to float32)
        return torch.addcmul(self.beta.to(x.dtype), x,
                             self.scale(x).to(x.dtype))


def _grn_scale(gx, gamma, eps: float):
    """``(mean, nx, scale)`` of GRN from the spatial norm ``gx``:
    ``mean = mean_c(gx) + eps``, ``nx = gx / mean``,
    ``scale = 1 + gamma * nx``."""
    mean = gx.mean(dim=1, keepdim=True).add_(eps)
    nx = gx / mean
    # a cached 1 (no launch for a fresh tensor of ones); traced: a constant
    one = gamma.new_ones(()) if exporting() else \
        _one(gamma.dtype, gamma.device)
    return mean, nx, torch.addcmul(one, gamma, nx)


@cache_unless_compiling(maxsize=16)
def _one(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with outside_inference_mode():
        return torch.ones((), dtype=dtype, device=device)


class _GRNFunction(torch.autograd.Function):
    """GRN with a written-out backward: one autograd node instead of ~10,
    23 -> 15 operations in the backward (float32; 29 -> 16 under autocast,
    whose casts it has not), each a kernel launch on a GPU. Keeps ``x`` and
    per-channel statistics, as autograd's GRN does.

    With ``s = 1 + gamma * nx``, ``nx = gx / m``, ``m = mean_c(gx) + eps``
    and ``gs = sum_hw(g * x)`` for the output gradient ``g``:
    ``d beta = sum_nhw g``, ``d gamma = sum_n gs * nx``, and
    ``dx = g * s + x * (gs * gamma - mean_c(gs * gamma * nx)) / (m * gx)``
    (the second term 0 where ``gx == 0``, i.e. ``x == 0``)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        gx = spatial_l2_norm(x, chunk=None)  # float32 for half-precision x
        with torch.no_grad():
            mean, nx, scale = _grn_scale(gx, gamma, eps)
        scale = scale.to(x.dtype)
        ctx.save_for_backward(x, gamma, gx, mean, nx, scale)
        ctx.beta_dtype = beta.dtype
        return torch.addcmul(beta.to(x.dtype), x, scale)

    @staticmethod
    def backward(ctx, grad):
        x, gamma, gx, mean, nx, scale = ctx.saved_tensors
        acc = gx.dtype  # float32, or float64 for float64 x
        grad_beta = grad.sum((0, 2, 3), keepdim=True, dtype=acc)
        gs = (grad * x).sum((2, 3), keepdim=True, dtype=acc)
        grad_gamma = (gs * nx).sum(0, keepdim=True)
        gnx = gs * gamma
        ratio = (gnx - (gnx * nx).mean(1, keepdim=True)).div_(mean).div_(gx)
        ratio.masked_fill_(gx == 0, 0)
        grad_x = torch.addcmul(grad * scale, x, ratio.to(x.dtype))
        return (grad_x, grad_gamma.to(gamma.dtype),
                grad_beta.to(ctx.beta_dtype), None)


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


class DWConv2d(nn.Conv2d):
    """Stride-1 depthwise convolution with "same" padding and optional
    dilation, running through :func:`~overlock.ops.depthwise_conv2d`. Same
    parameters as :class:`torch.nn.Conv2d`."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True):
        super().__init__(channels, channels, kernel_size, 1,
                         dilation * (kernel_size - 1) // 2, dilation, channels,
                         bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.padding[0],
                                self.dilation[0])


class ResDWConv(DWConv2d):
    """``x + DWConv(x)`` (3x3)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, kernel_size)

    def fused_weight(self) -> torch.Tensor:
        """``x + DWConv(x)``'s kernel (:mod:`overlock.param_cast` may lend
        the instance a half copy of it while training under autocast)."""
        return with_identity(self.weight)

    def forward(self, x):
        if settings.reference:  # as the official code
            return x + super().forward(x)
        return depthwise_conv2d(x, self.fused_weight(), self.bias,
                                self.padding[0])


class LargeKernelDWConv2d(DWConv2d):
    """Depthwise ``K x K`` convolution, stride 1, "same" padding: a plain
    :class:`torch.nn.Conv2d` (same parameters and keys) that may use
    ``depthwise_conv2d_implicit_gemm`` on CUDA."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__(channels, kernel_size, bias=bias)

    def conv(self, x, weight, bias):
        """This convolution with other weights (folded ones)."""
        return depthwise_conv2d(x, weight, bias, self.padding[0],
                                large_kernel=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight, self.bias)


def conv_bn(in_dim: int, out_dim: int, stride: int = 2) -> nn.Sequential:
    """3x3 convolution (no bias) + BatchNorm: the downsampling layers."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_dim))


def make_stem(in_channels: int, dim: int) -> nn.Sequential:
    """``patch_embed1``: four 3x3 convolutions + BN (GELU between),
    stride 4."""
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


# --------------------------------------------------------------------------
# Dilated re-parameterisable large kernel
# --------------------------------------------------------------------------
def stackable_batch_norms(bns: Sequence[nn.Module]) -> bool:
    """Whether :func:`stacked_batch_norm` equals running ``bns`` one by
    one: plain ``nn.BatchNorm2d`` (not SyncBatchNorm), affine, tracking
    statistics, in the same mode with the same ``eps`` and ``momentum``."""
    first = bns[0]
    return all(type(bn) is nn.BatchNorm2d and bn.affine and
               bn.track_running_stats and bn.training == first.training and
               bn.momentum is not None and bn.momentum == first.momentum and
               bn.eps == first.eps for bn in bns)


def stacked_batch_norm(y: torch.Tensor,
                       bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """``cat([bn(part) for bn, part in zip(bns, y.chunk(len(bns), 1))],
    1)`` in one BatchNorm: the parameters and running statistics
    concatenated, the updated statistics copied back (one ``foreach``
    operation), the ``num_batches_tracked`` counters incremented (another).
    A momentum of 0 (the recomputation's ``KeepRunningStats``) leaves the
    statistics untouched, as a BatchNorm with momentum 0 does."""
    first = bns[0]
    params = torch.cat([bn.weight for bn in bns] + [bn.bias for bn in bns])
    weight, bias = params.chunk(2)
    # (with momentum 0 the copy is updated in vain, but a recomputation must
    # save the tensors the first forward saved)
    update = first.training and first.momentum != 0
    stats = torch.cat([bn.running_mean for bn in bns] +
                      [bn.running_var for bn in bns])
    mean, var = stats.chunk(2)
    out = F.batch_norm(y, mean, var, weight, bias, first.training,
                       first.momentum, first.eps)
    if update:
        torch._foreach_copy_(
            [bn.running_mean for bn in bns] + [bn.running_var for bn in bns],
            list(stats.split(first.num_features)))
    if first.training:
        counters = [bn.num_batches_tracked for bn in bns
                    if bn.num_batches_tracked is not None]
        if counters:
            torch._foreach_add_(counters, 1)
    return out


class DilatedReparamBlock(nn.Module):
    """Large-kernel depthwise conv + BN, with parallel dilated small-kernel
    branches (UniRepLKNet) that :meth:`reparameterize` folds into one kernel.

    In inference (see :func:`~overlock.reparam.use_folded`) it runs the
    merged kernel, cached until a weight or statistic changes.
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

    def _branch_layers(self):
        for k, r in self.branches:
            yield r, getattr(self, f'dil_conv_k{k}_{r}'), \
                getattr(self, f'dil_bn_k{k}_{r}')

    def forward(self, x):
        if self.deploy:
            return self.lk_origin(x)
        if use_folded(self):
            return self.lk_origin.conv(x, *cached(self, self._merge))
        x = autocast_input(x)  # read by every branch
        bns = [self.origin_bn] + [bn for _, _, bn in self._branch_layers()]
        if settings.reference or not stackable_batch_norms(bns):
            out = self.origin_bn(self.lk_origin(x))
            for _, conv, bn in self._branch_layers():
                out = out + bn(conv(x))
            return out
        # one BatchNorm over the stacked branches, one sum: the same numbers
        # as a BatchNorm per branch and a chain of additions, in 3 + 4
        # operations instead of 3 per branch (each a kernel launch and a
        # module call on a GPU)
        ys = [self.lk_origin(x)] + [conv(x) for _, conv, _ in
                                    self._branch_layers()]
        out = stacked_batch_norm(torch.cat(ys, 1), bns)
        out = out.view(out.shape[0], len(ys), -1, *out.shape[2:])
        # in the branches' dtype, as their chain of additions: GPU autocast
        # would sum a float32 copy of all of them
        with keep_half(out):
            return out.sum(1)

    def _merge(self) -> Tuple[torch.Tensor, torch.Tensor]:
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None,
                                    self.origin_bn)
        for r, conv, bn in self._branch_layers():
            w, b = fuse_conv_bn(conv.weight, None, bn)
            w = dilate_kernel(w, r)
            pad = (self.kernel_size - w.shape[-1]) // 2
            weight = weight + F.pad(w, [pad] * 4)
            bias = bias + b
        return weight, bias

    def merged_kernel(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single convolution equal to this block in
        eval mode."""
        if self.deploy:
            return self.lk_origin.weight, self.lk_origin.bias
        return self._merge()

    def merged_kernel_bn(self, bn: nn.BatchNorm2d):
        """:meth:`merged_kernel` with a following eval-mode BN folded in."""
        return fuse_conv_bn(*self.merged_kernel(), bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BNs and dilated branches into ``lk_origin`` (in place)."""
        if self.deploy:
            return
        weight, bias = self._merge()
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


# --------------------------------------------------------------------------
# Named views of upstream's nn.Sequential groups
# --------------------------------------------------------------------------
class GRNMlp(NamedTuple):
    """``conv1x1 -> GELU -> ResDWConv -> GRN -> conv1x1`` (the MLP of both
    blocks: ``RepConvBlock.proj[4:9]``, ``DynamicConvBlock.mlp``)."""
    fc1: nn.Conv2d
    act: nn.GELU
    dwconv: ResDWConv
    grn: GRN
    fc2: nn.Conv2d

    @staticmethod
    def build(dim: int, hidden: int) -> List[nn.Module]:
        return [nn.Conv2d(dim, hidden, 1), nn.GELU(), ResDWConv(hidden, 3),
                GRN(hidden), nn.Conv2d(hidden, dim, 1)]


class RepConvProj(NamedTuple):
    """``RepConvBlock.proj``: LN -> large kernel -> BN -> SE, the GRN MLP,
    DropPath."""
    norm: LayerNorm2d
    large_kernel: DilatedReparamBlock
    lk_bn: nn.BatchNorm2d
    se: SEModule
    fc1: nn.Conv2d
    act: nn.GELU
    dwconv: ResDWConv
    grn: GRN
    fc2: nn.Conv2d
    drop_path: nn.Module

    @property
    def mlp(self) -> GRNMlp:
        return GRNMlp(*self[4:9])

    @staticmethod
    def build(dim: int, hidden: int, kernel_size: int, drop_path: float,
              deploy: bool) -> List[nn.Module]:
        return [LayerNorm2d(dim),
                DilatedReparamBlock(dim, kernel_size, deploy=deploy),
                nn.BatchNorm2d(dim), SEModule(dim),
                *GRNMlp.build(dim, hidden),
                DropPath(drop_path) if drop_path > 0 else nn.Identity()]


class Fusion(NamedTuple):
    """``DynamicConvBlock.fusion``: depthwise 3x3 -> BN -> GELU -> 1x1 ->
    GRN."""
    dwconv: DWConv2d
    bn: nn.BatchNorm2d
    act: nn.GELU
    fc: nn.Conv2d
    grn: GRN

    @staticmethod
    def build(in_dim: int, out_dim: int) -> List[nn.Module]:
        return [DWConv2d(in_dim, 3), nn.BatchNorm2d(in_dim), nn.GELU(),
                nn.Conv2d(in_dim, out_dim, 1), GRN(out_dim)]


class ConvBN(NamedTuple):
    """1x1 convolution (no bias) -> BN (``weight_query``,
    ``dyconv_proj``)."""
    conv: nn.Conv2d
    bn: nn.BatchNorm2d

    @staticmethod
    def build(in_dim: int, out_dim: int) -> List[nn.Module]:
        return [nn.Conv2d(in_dim, out_dim, 1, bias=False),
                nn.BatchNorm2d(out_dim)]


class ConvBNAct(NamedTuple):
    """1x1 convolution (no bias) -> BN -> SiLU (``gate``)."""
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    act: nn.SiLU

    @staticmethod
    def build(dim: int) -> List[nn.Module]:
        return [*ConvBN.build(dim, dim), nn.SiLU()]


class BNConv(NamedTuple):
    """BN -> 1x1 convolution (``DynamicConvBlock.proj``)."""
    bn: nn.BatchNorm2d
    conv: nn.Conv2d

    @staticmethod
    def build(in_dim: int, out_dim: int) -> List[nn.Module]:
        return [nn.BatchNorm2d(in_dim), nn.Conv2d(in_dim, out_dim, 1)]


class LargeKernelBN(NamedTuple):
    """Dilated re-param large kernel -> BN (``lepe``)."""
    large_kernel: DilatedReparamBlock
    bn: nn.BatchNorm2d

    @staticmethod
    def build(dim: int, kernel_size: int, deploy: bool) -> List[nn.Module]:
        return [DilatedReparamBlock(dim, kernel_size, deploy=deploy),
                nn.BatchNorm2d(dim)]
