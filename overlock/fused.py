"""The fused CPU inference path of the two blocks.

In eval mode without autograd on CPU (see :func:`enabled`), each block runs
with its BatchNorms, LayerScales, identity shortcuts of the 3x3 convolutions
and GRN shifts folded into the neighbouring convolutions (cached per block
until a weight or statistic changes, :func:`overlock.reparam.cached`),
activations and residual additions fused into oneDNN convolutions,
element-wise work done in place, and the features kept channels-last.
Outputs equal the plain path to float rounding (tested).

The layer names come from the views of :mod:`overlock.layers`.
"""
from typing import Tuple

import torch
from torch import nn

from .layers import (BNConv, ConvBN, ConvBNAct, Fusion, GRNMlp,
                     LargeKernelBN, LayerScale, RepConvProj)
from .ops.contmix import (aggregate_window_major, at_contmix_size,
                          neighborhood_bias)
from .ops.cpu import conv_act, layout_of
from .reparam import cached, fold_bn_before, fuse_conv_bn, use_folded

__all__ = ['enabled', 'to_channels_last', 'repconv_forward',
           'dynconv_forward']


def enabled(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` runs the fused path on ``x`` now (not under
    autocast: its oneDNN calls take one dtype, autocast's ops another)."""
    return use_folded(module) and x.device.type == 'cpu' and \
        x.dtype in (torch.float32, torch.float64) and \
        not torch.is_autocast_enabled('cpu')


def to_channels_last(x: torch.Tensor) -> Tuple[torch.Tensor,
                                                torch.memory_format]:
    """``x`` channels-last (faster on CPU for every layer but a few large
    kernels, which convert), and the layout to give the outputs."""
    return x.contiguous(memory_format=torch.channels_last), layout_of(x)


def softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """In-place softmax (no autograd): on CPU 3-4x faster than
    ``Tensor.softmax`` along a non-innermost axis."""
    x.sub_(x.amax(dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim, keepdim=True))


def _residual_scale(ls: nn.Module, res_scale: bool, w, b):
    """Fold a LayerScale around a residual branch ending in the 1x1 conv
    ``(w, b)``: ``res_scale`` scales the shortcut (returned as ``res_w``),
    otherwise the branch. Returns ``(w, b, res_w)``."""
    if not isinstance(ls, LayerScale):
        return w, b, None
    lw, lb = ls.weight.flatten(), ls.bias
    if res_scale:
        return w, b + lb, lw.view(1, -1, 1, 1)
    return w * lw.view(-1, 1, 1, 1), b * lw + lb, None


def _mlp_params(mlp: GRNMlp, ls: nn.Module, res_scale: bool) -> dict:
    """Folded weights of the GRN MLP and the residual around it."""
    b2 = mlp.fc2.bias + mlp.fc2.weight.flatten(1) @ mlp.grn.beta.flatten()
    w2, b2, res_w = _residual_scale(ls, res_scale, mlp.fc2.weight, b2)
    return dict(fc1_w=mlp.fc1.weight, fc1_b=mlp.fc1.bias,
                dw_w=mlp.dwconv.fused_weight(), dw_b=mlp.dwconv.bias,
                grn=mlp.grn, fc2_w=w2, fc2_b=b2, res_w=res_w)


def _mlp_forward(y: torch.Tensor, p: dict, residual: torch.Tensor):
    h = conv_act(y, p['fc1_w'], p['fc1_b'], act='gelu')
    h = conv_act(h, p['dw_w'], p['dw_b'], 1, h.shape[1])
    h.mul_(p['grn'].scale(h))
    if p['res_w'] is None:
        return conv_act(h, p['fc2_w'], p['fc2_b'], add=residual)
    return conv_act(h, p['fc2_w'], p['fc2_b']).addcmul_(residual, p['res_w'])


# --------------------------------------------------------------------------
# RepConvBlock
# --------------------------------------------------------------------------
def _repconv_params(block) -> dict:
    proj = RepConvProj(*block.proj)
    lk_w, lk_b = proj.large_kernel.merged_kernel_bn(proj.lk_bn)
    p = _mlp_params(proj.mlp, block.ls, block.res_scale)
    p.update(res_dw_w=block.dwconv.fused_weight(), res_dw_b=block.dwconv.bias,
             lk_w=lk_w, lk_b=lk_b)
    return p


def repconv_forward(block, x: torch.Tensor) -> torch.Tensor:
    p = cached(block, lambda: _repconv_params(block))
    proj = RepConvProj(*block.proj)
    x = conv_act(x, p['res_dw_w'], p['res_dw_b'], 1, x.shape[1])
    y = proj.large_kernel.lk_origin.conv(proj.norm(x), p['lk_w'], p['lk_b'])
    y.mul_(proj.se.proj(y))
    return _mlp_forward(y, p, residual=x)


# --------------------------------------------------------------------------
# DynamicConvBlock
# --------------------------------------------------------------------------
def _dynconv_params(block) -> dict:
    fusion = Fusion(*block.fusion)
    proj = BNConv(*block.proj)
    query = ConvBN(*block.weight_query)
    lepe = LargeKernelBN(*block.lepe)
    p = _mlp_params(GRNMlp(*block.mlp), block.ls2, block.res_scale)
    out_w, out_b = fold_bn_before(proj.conv, proj.bn)
    out_w, out_b, res1_w = _residual_scale(block.ls1, block.res_scale, out_w,
                                           out_b)
    q_w, q_b = fuse_conv_bn(query.conv.weight, None, query.bn)
    dyn, gate = ConvBN(*block.dyconv_proj), ConvBNAct(*block.gate)
    p.update(
        dw1_w=block.dwconv1.fused_weight(), dw1_b=block.dwconv1.bias,
        dw2_w=block.dwconv2.fused_weight(), dw2_b=block.dwconv2.bias,
        fus=fuse_conv_bn(fusion.dwconv.weight, fusion.dwconv.bias, fusion.bn),
        fc_w=fusion.fc.weight, fc_b=fusion.fc.bias, grn1=fusion.grn,
        q_w=q_w * block.scale, q_b=q_b * block.scale,
        dyn=fuse_conv_bn(dyn.conv.weight, None, dyn.bn),
        lepe=lepe.large_kernel.merged_kernel_bn(lepe.bn),
        gate=fuse_conv_bn(gate.conv.weight, None, gate.bn),
        out_w=out_w, out_b=out_b, res1_w=res1_w, attn_bias={})
    return p


def _attn_bias(block, p: dict, height: int, width: int) -> torch.Tensor:
    """weight_proj bias + relative-position biases, ``(G, S^2 + K^2,
    H * W)``, cached per map size."""
    bias = p['attn_bias'].get((height, width))
    if bias is None:
        b1 = neighborhood_bias(block.rpb1, height, width, block.smk_size)
        b2 = neighborhood_bias(block.rpb2, height, width, block.kernel_size)
        bias = torch.cat([b1, b2], -1) + block.weight_proj.bias
        bias = bias.transpose(1, 2).contiguous()
        if len(p['attn_bias']) >= 16:
            p['attn_bias'].clear()
        p['attn_bias'][(height, width)] = bias
    return bias


def _contmix(block, x, x_f, p):
    b, c, h, w = x.shape
    g, small, large = block.num_heads, block.smk_size, block.kernel_size
    query, key = torch.split(x_f, [block.dim, block.ctx_dim], dim=1)
    query = conv_act(query, p['q_w'], p['q_b']).reshape(b, g, -1, h * w)
    key = block.weight_key(key).reshape(b, g, -1, 49)
    # (S^2 + K^2, 49) x (49, c) then x (c, HW): window-major attention
    kw = torch.matmul(block.weight_proj.weight.view(-1, 49),
                      key.transpose(-2, -1))
    attn = torch.matmul(kw, query).add_(_attn_bias(block, p, h, w))
    attn = attn.view(b, g, -1, h, w)
    # (B, G, H, W, c) values of the two kernels; the aggregation is
    # fastest on these contiguous blocks
    value = x.reshape(b, 2, g, c // (2 * g), h, w).permute(1, 0, 2, 4, 5, 3)
    out = torch.zeros(value.shape, dtype=x.dtype, device=x.device)
    for i, (k, sl) in enumerate(((small, slice(0, small * small)),
                                 (large, slice(small * small, None)))):
        a = softmax_(attn[:, :, sl], dim=2)
        aggregate_window_major(a, value[i].contiguous(), k, out[i])
    # (2, B, G, H, W, c) -> channels-last (B, C, H, W)
    out = out.permute(1, 3, 4, 0, 2, 5).reshape(b, h, w, c)
    return out.permute(0, 3, 1, 2)


def dynconv_forward(block, x: torch.Tensor, h_x: torch.Tensor,
                    h_r: torch.Tensor):
    p = cached(block, lambda: _dynconv_params(block))
    if not block.is_first:
        h_x = block.x_scale(h_x).add_(block.h_scale(h_r))
    x_f = torch.cat([x, h_x], dim=1)
    identity = conv_act(x_f, p['dw1_w'], p['dw1_b'], 1, x_f.shape[1])
    x_f = block.norm1(identity)
    x = conv_act(x_f, *p['fus'], 1, x_f.shape[1], act='gelu')
    x = conv_act(x, p['fc_w'], p['fc_b'])
    grn = p['grn1']
    x = x.mul_(grn.scale(x)).add_(grn.beta)
    gate = conv_act(x, *p['gate'], act='swish')
    lepe = LargeKernelBN(*block.lepe).large_kernel.lk_origin.conv(
        x, *p['lepe'])

    x = at_contmix_size(lambda x, x_f: _contmix(block, x, x_f, p), x, x_f,
                        block.kernel_size)
    x = conv_act(x, *p['dyn'], add=lepe.contiguous(memory_format=layout_of(x)))
    x.mul_(block.se_layer.proj(x)).mul_(gate)
    if p['res1_w'] is None:
        x = conv_act(x, p['out_w'], p['out_b'], add=identity)
    else:
        x = conv_act(x, p['out_w'], p['out_b']).addcmul_(identity, p['res1_w'])
    x = conv_act(x, p['dw2_w'], p['dw2_b'], 1, x.shape[1])
    x = _mlp_forward(block.norm2(x), p, residual=x)
    if block.is_last:
        return x, None
    return tuple(torch.split(x, [block.dim, block.ctx_dim], dim=1))
