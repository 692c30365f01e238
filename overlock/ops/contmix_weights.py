"""ContMix weights and aggregation in one autograd node that keeps no
weights: :func:`softmax_aggregate`.

A Focus-Net block turns its logits ``q^T (k W^T) + b`` (plus the
relative-position biases) into two sets of softmax weights, ``S*S`` and
``K*K`` per pixel and head, and aggregates its values with them. Through
plain autograd the weights are kept for the backward (by the softmax and by
the aggregation): in float32, ~11% of the activations an OverLoCK-T
training step keeps. Here they are recomputed in the backward from what
produced them (the query and the projected key, a small fraction of their
size): one matrix product and two softmaxes more per block, the same
numbers.

Used by the blocks while training with ``selective_cp`` (the memory-saving
recomputation), unless natten runs the aggregation.
"""
from typing import Tuple

import torch

from .contmix import (aggregate, aggregate_backward, check_map_size,
                      neighborhood_bias, neighborhood_bias_grad)

__all__ = ['softmax_aggregate', 'contmix_weights']


def contmix_weights(q: torch.Tensor, kw: torch.Tensor, proj_b: torch.Tensor,
                    rpb1: torch.Tensor, rpb2: torch.Tensor, height: int,
                    width: int, small: int,
                    large: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two sets of ContMix weights, ``(B, G, H*W, S*S)`` and ``(B, G,
    H*W, K*K)``: ``softmax(q @ kw + proj_b + relative-position bias)``
    split at ``S*S`` (``q``: ``(B, G, H*W, c)``, ``kw``: ``(B, G, c, S*S +
    K*K)``; tables ``(G, 2S-1, 2S-1)``, ``(G, 2K-1, 2K-1)``)."""
    logits = torch.matmul(q, kw) + proj_b
    l1, l2 = torch.split(logits, [small * small, large * large], -1)
    l1 = l1 + neighborhood_bias(rpb1, height, width, small)
    l2 = l2 + neighborhood_bias(rpb2, height, width, large)
    return l1.softmax(-1), l2.softmax(-1)


def _aggregate(attn, value, kernel_size):
    b, g, h, w, _ = value.shape
    return aggregate(attn.view(b, g, h, w, -1), value, kernel_size)


class _SoftmaxAggregate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, kw, proj_b, rpb1, rpb2, value1, value2, small,
                large):
        height, width = value1.shape[2:4]
        ctx.conf = (height, width, small, large)
        with torch.autocast(q.device.type, enabled=False):
            a1, a2 = contmix_weights(q, kw, proj_b, rpb1, rpb2, height,
                                     width, small, large)
            out = (_aggregate(a1, value1, small),
                   _aggregate(a2, value2, large))
        ctx.save_for_backward(q, kw, proj_b, rpb1, rpb2, value1, value2)
        return out

    @staticmethod
    def backward(ctx, go1, go2):
        q, kw, proj_b, rpb1, rpb2, value1, value2 = ctx.saved_tensors
        height, width, small, large = ctx.conf
        needs = ctx.needs_input_grad
        grads = [None] * 9
        with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
            weights = contmix_weights(q, kw, proj_b, rpb1, rpb2, height,
                                      width, small, large)
            grad_logits = []
            for i, (go, a, v, k) in enumerate(
                    ((go1, weights[0], value1, small),
                     (go2, weights[1], value2, large))):
                b, g, h, w, _ = v.shape
                ga, gv = aggregate_backward(
                    go, a.view(b, g, h, w, -1), v, k, True, needs[5 + i])
                if needs[5 + i]:
                    grads[5 + i] = gv
                grad_logits.append(torch._softmax_backward_data(
                    ga.view(a.shape), a, -1, a.dtype))
            for i, (gl, k) in enumerate(zip(grad_logits, (small, large))):
                if needs[3 + i]:
                    grads[3 + i] = neighborhood_bias_grad(
                        gl.sum(0), height, width, k)
            gl = torch.cat(grad_logits, -1)
            if needs[0]:
                grads[0] = torch.matmul(gl, kw.transpose(-2, -1))
            if needs[1]:
                grads[1] = torch.matmul(q.transpose(-2, -1), gl)
            if needs[2]:
                grads[2] = gl.sum((0, 1, 2))
        return tuple(grads)


def softmax_aggregate(q: torch.Tensor, kw: torch.Tensor,
                      proj_b: torch.Tensor, rpb1: torch.Tensor,
                      rpb2: torch.Tensor, value1: torch.Tensor,
                      value2: torch.Tensor, small: int,
                      large: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both ContMix aggregations with the weights of
    :func:`contmix_weights`, which are recomputed in the backward instead of
    kept.

    Args:
        q (Tensor): ``(B, G, H*W, c)`` scaled queries.
        kw (Tensor): ``(B, G, c, S*S + K*K)``, the pooled key times the
            projection's weight.
        proj_b (Tensor): ``(S*S + K*K,)``, the projection's bias.
        rpb1 (Tensor): ``(G, 2S-1, 2S-1)`` relative-position table.
        rpb2 (Tensor): ``(G, 2K-1, 2K-1)`` relative-position table.
        value1 (Tensor): ``(B, G, H, W, C1)`` (made contiguous here).
        value2 (Tensor): ``(B, G, H, W, C2)`` (made contiguous here).
        small (int): ``S``.
        large (int): ``K``.

    Returns:
        tuple[Tensor]: the two ``(B, G, H, W, C)`` aggregations, in the
        values' dtype (the weights are computed in ``q``'s, with autocast
        off).
    """
    b, g, hw, _ = q.shape
    for value, k in ((value1, small), (value2, large)):
        if value.shape[:2] != (b, g) or \
                value.shape[2] * value.shape[3] != hw:
            raise ValueError(
                f'softmax_aggregate: values {tuple(value.shape)} do not match '
                f'queries {tuple(q.shape)} (B, G, H*W, c)')
        check_map_size(value, k)
    if kw.shape[-1] != small * small + large * large:
        raise ValueError(
            f'softmax_aggregate: kw {tuple(kw.shape)} should end with '
            f'{small}^2 + {large}^2 = {small * small + large * large}')
    return _SoftmaxAggregate.apply(q, kw, proj_b, rpb1, rpb2,
                                   value1.contiguous(), value2.contiguous(),
                                   small, large)
