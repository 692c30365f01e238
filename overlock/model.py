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

This file holds the network. The two blocks are in :mod:`overlock.blocks`,
the arch table and its checks in :mod:`overlock.archs`, layers in
:mod:`overlock.layers`, kernels in :mod:`overlock.ops`, recomputation in
:mod:`overlock.recompute`, the fused inference path in :mod:`overlock.fused`
and the switches in :mod:`overlock.config`.
"""
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import fused
from .archs import ARCH_DEFAULTS, ARCH_SETTINGS, resolve_arch
from .blocks import DynamicConvBlock, RepConvBlock
from .layers import (GRN, DilatedReparamBlock, LayerScale,
                     chain, OUT_NORMS, conv_bn, make_out_norm, make_stem)
from .ops.contmix import upsample_bilinear

__all__ = ['OverLoCK', 'ARCH_SETTINGS', 'ARCH_DEFAULTS', 'RepConvBlock',
           'DynamicConvBlock']


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
        out_norm (str): The backbone's output norms (``extra_norm``):
            ``'layer'`` (upstream: per position, over the channels) or
            ``'group'`` (per image, over channels and positions; for training
            from scratch, see the README's toy run). Same parameter names.
            Defaults to 'layer'.
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
                 use_ds: bool = True,
                 out_norm: str = 'layer'):
        super().__init__()
        if out_norm not in OUT_NORMS:
            raise ValueError(f'out_norm must be one of {OUT_NORMS}, got '
                             f'{out_norm!r}')
        self.out_norm = out_norm
        cfg = resolve_arch(arch)
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
        for name, value, low in (('in_channels', in_channels, 1),
                                 ('num_classes', num_classes, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or \
                    value < low:
                raise ValueError(f'{name} must be an int >= {low}, got '
                                 f'{value!r}')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got '
                             f'{drop_path_rate!r}')
        if num_classes > 0 and out_indices != (0, 1, 2, 3):
            raise ValueError(
                f'out_indices={out_indices} with num_classes={num_classes}: a '
                f'classifier returns logits, out_indices selects the stages '
                f'of a backbone (num_classes=0)')

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.fuse_overview = fuse_overview and num_classes <= 0
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.selective_cp = selective_cp
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

        block_kw = dict(deploy=deploy, with_cp=with_cp,
                        selective_cp=selective_cp)
        dpr = torch.linspace(0, drop_path_rate, sum(depths) + sum(sub_depths),
                             device='cpu').tolist()
        offsets = [0, depths[0], sum(depths[:2]), sum(depths[:3])]
        for s in range(4):
            self.add_module(
                f'blocks{s + 1}',
                nn.ModuleList(
                    RepConvBlock(dims[s], ks[s], cfg['mlp_ratios'][s], ls[s],
                                 res_scale, dpr[offsets[s] + i], **block_kw)
                    for i in range(depths[s])))
        for j, s in enumerate((2, 3)):
            start = sum(depths) + sum(sub_depths[:j])
            self.add_module(
                f'sub_blocks{s + 1}',
                nn.ModuleList(
                    DynamicConvBlock(
                        dims[s], dims[3], ks[s], cfg['smk_size'],
                        cfg['sub_num_heads'][j], cfg['sub_mlp_ratios'][j],
                        ls[s], res_scale, dpr[start + i],
                        is_first=(s == 2 and i == 0),
                        is_last=(s == 3 and i == sub_depths[j] - 1),
                        **block_kw) for i in range(sub_depths[j])))

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
            norms = [make_out_norm(self.out_norm, c) for c in self.channels]
            if self.fuse_overview:
                norms.append(make_out_norm(self.out_norm, dims[3]))
                self.h_proj = nn.Sequential(
                    nn.Conv2d(dims[3], self.channels[3], 1),
                    LayerScale(self.channels[3], init_value=1e-5))
            self.extra_norm = nn.ModuleList(norms)

        self.reset_parameters()
        self._freeze_stages()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Random initialisation (:meth:`reset_parameters`); adapters
        override it to load weights."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation as upstream (truncated normal convs); run
        once by the constructor."""
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'OverLoCK expects a torch.Tensor (N, C, H, W), '
                            f'got {type(x).__name__}; e.g. '
                            f'torch.from_numpy(x) for a numpy array.')
        if x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f'OverLoCK expects a 4-D (N, C, H, W) tensor, got '
                             f'{shape}; add a batch axis with x[None] for a '
                             f'single image.')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'OverLoCK was built for {self.in_channels} input channels but '
                f'got {x.shape[1]} (input shape {tuple(x.shape)}); pass images '
                f'as (N, C, H, W) or set in_channels.')
        if not x.is_floating_point():
            raise TypeError(f'OverLoCK expects floating-point images, got '
                            f'{x.dtype}; convert and normalise them first, '
                            f'e.g. x.float() / 255.')
        if x.shape[0] == 0:
            raise ValueError(f'OverLoCK got an empty batch {tuple(x.shape)}')
        weight = self.patch_embed1[0].weight
        if x.dtype != weight.dtype and not \
                torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f'OverLoCK got a {x.dtype} input but its weights are '
                f'{weight.dtype}: convert one to the other (x.to('
                f'{weight.dtype}) or model.to({x.dtype})), or run under '
                f'torch.autocast.')

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
        x = chain(self.blocks1, self.patch_embed1(x))
        if 0 in out_indices:
            feats[0] = norms[0](x) if norms is not None else x
        if last == 0:
            return feats, None
        x = chain(self.blocks2, self.patch_embed2(x))
        if norms is not None:
            x = norms[1](x)
        feats[1] = x
        if last == 1:
            return feats, None

        x = chain(self.blocks3, self.patch_embed3(x))
        overview = chain(self.blocks4, self.patch_embed4(x))
        ctx_ori = self.high_level_proj(overview)
        ctx_up = upsample_bilinear(ctx_ori, x.shape[2:])
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
        try:
            return self._forward(x)
        except ValueError as e:
            if 'more than 1 value per channel' not in str(e):
                raise
            raise ValueError(
                f'OverLoCK: a BatchNorm in training mode got one value per '
                f'channel: input {tuple(x.shape)} gives a 1x1 map at stride '
                f'32 for a batch of 1. Train with a batch of 2 or more, or '
                f'inputs larger than 32 pixels per side.') from e

    def _forward(self, x: torch.Tensor):
        fmt = None
        if fused.enabled(self, x) and fused.native_cpu(x):
            x, fmt = fused.to_channels_last(x)
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
