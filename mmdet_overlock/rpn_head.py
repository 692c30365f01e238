"""An RPN head for mixed-precision training: :class:`Float32RPNHead`.

Under autocast the RPN's scores and box deltas are float16 / bfloat16, and
mmdet's ``BaseDenseHead.predict_by_feat`` builds the anchors in the scores'
dtype (``grid_priors(dtype=cls_scores[0].dtype)``) before decoding the
proposals. In bfloat16 (8 significant bits) an anchor coordinate above
1024 pixels moves by up to 4 pixels, and the anchor's centre and size,
computed from the rounded corners in bfloat16 again, by more: on a
1344x800 image the anchors are off by up to 7.3 pixels. The RPN learnt
its deltas against float32 anchors (its loss builds them in float32), so
every proposal of a bfloat16 run is shifted by its anchor's rounding, in
training (the proposals the RoI head learns from) and in testing. On CPU
the half-precision boxes also stop mmcv's NMS, which reads float32 boxes.

This head decodes its proposals in float32: the scores and deltas cast to
float32 (autocast off inside), so the anchors, the decoding and the NMS
are float32, as in a float32 run. In float32 it is ``RPNHead``.
"""
from typing import List

import torch
from mmdet.models.dense_heads import RPNHead
from torch import Tensor

from overlock.layers import HALF_DTYPES

__all__ = ['Float32RPNHead']


class Float32RPNHead(RPNHead):
    """mmdet's ``RPNHead`` that decodes half-precision predictions into
    proposals in float32 (see the module docstring): float32 anchors, box
    decoding and NMS under autocast, where ``RPNHead`` rounds its anchors to
    the predictions' dtype (up to 7 pixels in bfloat16). Same arguments,
    parameters and losses as ``RPNHead``; with float32 predictions it is
    that head.

    In a config::

        custom_imports = dict(imports=['mmdet_overlock'])
        model = dict(rpn_head=dict(type='Float32RPNHead'))

    Cost under autocast: a float32 copy of the RPN's outputs (15 values per
    location with 3 anchors) while the proposals are decoded.
    """

    def predict_by_feat(self, cls_scores: List[Tensor],
                        bbox_preds: List[Tensor], *args,
                        **kwargs) -> list:
        if cls_scores[0].dtype not in HALF_DTYPES:
            return super().predict_by_feat(cls_scores, bbox_preds, *args,
                                           **kwargs)
        with torch.autocast(cls_scores[0].device.type, enabled=False):
            return super().predict_by_feat(
                [s.float() for s in cls_scores],
                [b.float() for b in bbox_preds], *args, **kwargs)
