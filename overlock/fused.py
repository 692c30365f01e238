"""The fused inference path of the two blocks.

In eval mode without autograd (see :func:`enabled`), each block runs with
its BatchNorms, LayerScales, identity shortcuts of the 3x3 convolutions and
GRN shifts folded into the neighbouring convolutions (cached per block
until a weight or statistic changes, :func:`overlock.reparam.cached`) and
element-wise work done in place. Outputs equal the plain path to float
rounding (tested). Two flavours:

* **CPU, float32 / float64, no autocast** (:func:`native_cpu`): activations
  and residual additions fused into oneDNN convolutions, the features kept
  channels-last, the ContMix aggregation window-major;
* **any other case** (CUDA, autocast, half-precision inputs): NCHW, plain
  convolutions and the ContMix aggregation op (the Triton kernel on CUDA).
  Under autocast the block runs with autocast off, in autocast's dtype, on
  folded weights cast once to it and cached: the plain path casts every
  weight on every call (on a GPU, where inference is launch-bound, each
  cast is a kernel launch). The ContMix logits and softmax and the GRN
  norms stay in float32, as in the plain path.

The layer names come from the views of :mod:`overlock.layers`.
"""
import contextlib
from typing import Callable, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (HALF_DTYPES, BNConv, ConvBN, ConvBNAct, Fusion, GRNMlp,
                     LargeKernelBN, LayerScale, RepConvProj, layer_norm_2d)
from .ops.contmix import (aggregate_window_major, at_contmix_size,
                          neighborhood_bias)
from .ops.cpu import conv_act, layout_of
from .reparam import cached, fold_bn_before, fuse_conv_bn, use_folded

__all__ = ['enabled', 'native_cpu', 'to_channels_last', 'repconv_forward',
           'dynconv_forward']


def enabled(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` runs the fused path on ``x`` now."""
    return use_folded(module) and x.is_floating_point()


def native_cpu(x: torch.Tensor) -> bool:
    """Whether the CPU flavour (oneDNN, channels-last) runs on ``x``: its
    oneDNN calls take one dtype, autocast's ops another."""
    return x.device.type == 'cpu' and \
        x.dtype in (torch.float32, torch.float64) and \
        not torch.is_autocast_enabled('cpu')


@contextlib.contextmanager
def _compute_dtype(x: torch.Tensor) -> Iterator[torch.dtype]:
    """The dtype a block computes in (autocast's, else ``x``'s), with
    autocast off inside."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        yield x.dtype
        return
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        yield dtype


def _cast(value, dtype: torch.dtype):
    """Floating-point tensors of (nested) folded parameters in ``dtype``;
    fresh containers (the per-size bias caches are per dtype)."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value  # modules (GRN: its float32 factor), numbers


#: folded parameters that stay in float32 for half-precision compute (the
#: ContMix logits and their biases)
_FLOAT32 = ('proj_w', 'attn_bias')


def _params(block: nn.Module, build: Callable[[], dict],
            dtype: torch.dtype) -> dict:
    """``build()``'s folded parameters, cached on ``block``, and their copy
    in ``dtype`` (cached with them)."""
    entry = cached(block, lambda: {None: build()})
    if dtype not in entry:
        base, logits = entry[None], dtype
        if dtype in HALF_DTYPES:
            logits = torch.float32
        with torch.inference_mode(False), torch.no_grad():
            entry[dtype] = {k: _cast(v, logits if k in _FLOAT32 else dtype)
                            for k, v in base.items()}
    return entry[dtype]


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


def _entry(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A block input in the compute dtype; NCHW off the CPU (cuDNN's
    channels-last depthwise kernels are ~9x slower)."""
    x = x.to(dtype)
    return x if x.device.type == 'cpu' else x.contiguous()


def _norm_params(norm: nn.Module):
    return norm.weight, norm.bias, norm.eps


def _se_params(se: nn.Module):
    _, fc1, _, fc2, _ = se.proj
    return fc1.weight, fc1.bias, fc2.weight, fc2.bias


def _se_(y: torch.Tensor, p) -> torch.Tensor:
    """``y * SE(y)`` in place."""
    w1, b1, w2, b2 = p
    # plain convolutions: on 1x1 maps oneDNN's fused ones cost more
    s = F.gelu(F.conv2d(F.adaptive_avg_pool2d(y, 1), w1, b1))
    return y.mul_(torch.sigmoid(F.conv2d(s, w2, b2)))


# --------------------------------------------------------------------------
# RepConvBlock
# --------------------------------------------------------------------------
def _repconv_params(block) -> dict:
    proj = RepConvProj(*block.proj)
    lk_w, lk_b = proj.large_kernel.merged_kernel_bn(proj.lk_bn)
    p = _mlp_params(proj.mlp, block.ls, block.res_scale)
    p.update(res_dw_w=block.dwconv.fused_weight(), res_dw_b=block.dwconv.bias,
             norm=_norm_params(proj.norm), lk_w=lk_w, lk_b=lk_b,
             se=_se_params(proj.se))
    return p


def repconv_forward(block, x: torch.Tensor) -> torch.Tensor:
    with _compute_dtype(x) as dtype:
        p = _params(block, lambda: _repconv_params(block), dtype)
        x = _entry(x, dtype)
        lk = RepConvProj(*block.proj).large_kernel.lk_origin
        x = conv_act(x, p['res_dw_w'], p['res_dw_b'], 1, x.shape[1])
        y = lk.conv(layer_norm_2d(x, *p['norm']), p['lk_w'], p['lk_b'])
        return _mlp_forward(_se_(y, p['se']), p, residual=x)


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
    _, key_conv, key_bn = block.weight_key
    if not block.is_first:  # x_scale(h_x) + h_scale(h_r)
        p['ctx'] = (block.x_scale.weight.view(1, -1, 1, 1),
                    block.h_scale.weight.view(1, -1, 1, 1),
                    (block.x_scale.bias + block.h_scale.bias).view(
                        1, -1, 1, 1))
    p.update(
        dw1_w=block.dwconv1.fused_weight(), dw1_b=block.dwconv1.bias,
        dw2_w=block.dwconv2.fused_weight(), dw2_b=block.dwconv2.bias,
        norm1=_norm_params(block.norm1), norm2=_norm_params(block.norm2),
        fus=fuse_conv_bn(fusion.dwconv.weight, fusion.dwconv.bias, fusion.bn),
        fc_w=fusion.fc.weight, fc_b=fusion.fc.bias, grn1=fusion.grn,
        q_w=q_w * block.scale, q_b=q_b * block.scale,
        key=fuse_conv_bn(key_conv.weight, None, key_bn),
        proj_w=block.weight_proj.weight.view(-1, 49),
        dyn=fuse_conv_bn(dyn.conv.weight, None, dyn.bn),
        lepe=lepe.large_kernel.merged_kernel_bn(lepe.bn),
        gate=fuse_conv_bn(gate.conv.weight, None, gate.bn),
        se=_se_params(block.se_layer),
        out_w=out_w, out_b=out_b, res1_w=res1_w, attn_bias={})
    return p


def _attn_bias(block, p: dict, height: int, width: int,
               window_major: bool) -> torch.Tensor:
    """weight_proj bias + relative-position biases, ``(G, S^2 + K^2,
    H * W)`` (``window_major``) or ``(G, H * W, S^2 + K^2)``, in the dtype
    of ``p['proj_w']``, cached per map size."""
    key = (height, width, window_major)
    bias = p['attn_bias'].get(key)
    if bias is None:
        b1 = neighborhood_bias(block.rpb1, height, width, block.smk_size)
        b2 = neighborhood_bias(block.rpb2, height, width, block.kernel_size)
        bias = torch.cat([b1, b2], -1) + block.weight_proj.bias
        if window_major:
            bias = bias.transpose(1, 2)
        bias = bias.to(p['proj_w'].dtype).contiguous()
        if len(p['attn_bias']) >= 16:
            p['attn_bias'].clear()
        p['attn_bias'][key] = bias
    return bias


def _query_key(block, x_f, p):
    query, key = torch.split(x_f, [block.dim, block.ctx_dim], dim=1)
    query = conv_act(query, p['q_w'], p['q_b'])
    return query, F.conv2d(F.adaptive_avg_pool2d(key, 7), *p['key'])


def _contmix_cpu(block, x, x_f, p):
    """Window-major ContMix (the CPU aggregation's fastest layout)."""
    b, c, h, w = x.shape
    g, small, large = block.num_heads, block.smk_size, block.kernel_size
    query, key = _query_key(block, x_f, p)
    query = query.reshape(b, g, -1, h * w)
    key = key.reshape(b, g, -1, 49)
    # (S^2 + K^2, 49) x (49, c) then x (c, HW): window-major attention
    kw = torch.matmul(p['proj_w'], key.transpose(-2, -1))
    attn = torch.matmul(kw, query).add_(_attn_bias(block, p, h, w, True))
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


def _contmix(block, x, x_f, p):
    """ContMix through the model's aggregation (any device and dtype;
    logits and softmax in ``p['proj_w']``'s dtype)."""
    h, w = x.shape[2:]
    query, key = _query_key(block, x_f, p)
    dtype = p['proj_w'].dtype
    attn = block.logits(query.to(dtype), key.to(dtype), p['proj_w'])
    attn = attn.add_(_attn_bias(block, p, h, w, False))
    attn1, attn2 = torch.split(attn, [block.smk_size**2,
                                      block.kernel_size**2], -1)
    return block.aggregate(x, attn1.softmax(-1), attn2.softmax(-1))


def dynconv_forward(block, x: torch.Tensor, h_x: torch.Tensor,
                    h_r: torch.Tensor):
    cpu = native_cpu(x)
    with _compute_dtype(x) as dtype:
        p = _params(block, lambda: _dynconv_params(block), dtype)
        x, h_x = _entry(x, dtype), _entry(h_x, dtype)
        if not block.is_first:
            x_w, h_w, ctx_b = p['ctx']
            h_x = torch.addcmul(ctx_b, h_x, x_w).addcmul_(
                _entry(h_r, dtype), h_w)
        x_f = torch.cat([x, h_x], dim=1)
        identity = conv_act(x_f, p['dw1_w'], p['dw1_b'], 1, x_f.shape[1])
        x_f = layer_norm_2d(identity, *p['norm1'])
        x = conv_act(x_f, *p['fus'], 1, x_f.shape[1], act='gelu')
        x = conv_act(x, p['fc_w'], p['fc_b'])
        grn = p['grn1']
        x = x.mul_(grn.scale(x)).add_(grn.beta)
        gate = conv_act(x, *p['gate'], act='swish')
        lepe = LargeKernelBN(*block.lepe).large_kernel.lk_origin.conv(
            x, *p['lepe'])

        contmix = _contmix_cpu if cpu else _contmix
        x = at_contmix_size(lambda x, x_f: contmix(block, x, x_f, p), x, x_f,
                            block.kernel_size)
        x = conv_act(x, *p['dyn'],
                     add=lepe.contiguous(memory_format=layout_of(x)))
        _se_(x, p['se']).mul_(gate)
        if p['res1_w'] is None:
            x = conv_act(x, p['out_w'], p['out_b'], add=identity)
        else:
            x = conv_act(x, p['out_w'], p['out_b']).addcmul_(identity,
                                                             p['res1_w'])
        x = conv_act(x, p['dw2_w'], p['dw2_b'], 1, x.shape[1])
        x = _mlp_forward(layer_norm_2d(x, *p['norm2']), p, residual=x)
        if block.is_last:
            return x, None
        return tuple(torch.split(x, [block.dim, block.ctx_dim], dim=1))
