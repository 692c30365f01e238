"""An RoI extractor for mixed-precision training: :class:`Float32RoIExtractor`.

Under autocast the FPN features are float16 / bfloat16, and mmdet's
``SingleRoIExtractor`` casts the RoIs to the features' dtype before pooling
with mmcv's ``RoIAlign``. Two problems follow:

* mmcv 2.1's ``RoIAlign`` has no bfloat16 kernels (its CPU and CUDA
  kernels take float32, float64 and float16): a two-stage detector trained
  with ``optim_wrapper.dtype=bfloat16`` stops at its first RoI pooling with
  ``"ROIAlign_forward" not implemented for 'BFloat16'`` (on CUDA,
  ``"roi_align_forward_cuda_kernel"``);
* RoI coordinates rounded to bfloat16 (8 significant bits) move by up to
  4 pixels on a 1333-pixel image (float16: half a pixel), and the level
  each RoI is pooled from is decided on the rounded box.

This extractor pools in float32: RoIs as given, the features cast to
float32 for the pooling (autocast off inside), and the pooled features cast
back to the features' dtype. In float32 it is ``SingleRoIExtractor``.
"""
from typing import Optional, Tuple

import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from torch import Tensor

from overlock.layers import HALF_DTYPES

__all__ = ['Float32RoIExtractor']


class Float32RoIExtractor(SingleRoIExtractor):
    """mmdet's ``SingleRoIExtractor`` that pools half-precision features in
    float32 (see the module docstring): needed for bfloat16 training with
    mmcv's ``RoIAlign``, which has no bfloat16 kernels, and it keeps the RoI
    coordinates in float32. Same arguments as ``SingleRoIExtractor``; with
    float32 features it is that extractor.

    In a config::

        custom_imports = dict(imports=['mmdet_overlock'])
        model = dict(roi_head=dict(
            bbox_roi_extractor=dict(type='Float32RoIExtractor'),
            mask_roi_extractor=dict(type='Float32RoIExtractor')))

    Cost under autocast: a float32 copy of each feature level while the RoIs
    are pooled (not kept for the backward) and the pooling itself in
    float32.
    """

    def forward(self, feats: Tuple[Tensor], rois: Tensor,
                roi_scale_factor: Optional[float] = None) -> Tensor:
        dtype = feats[0].dtype
        if dtype not in HALF_DTYPES:
            return super().forward(feats, rois, roi_scale_factor)
        with torch.autocast(feats[0].device.type, enabled=False):
            pooled = super().forward(tuple(f.float() for f in feats),
                                     rois.float(), roi_scale_factor)
        return pooled.to(dtype)
