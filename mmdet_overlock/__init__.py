"""Registers in MMDetection 3.x's ``MODELS`` registry (and does nothing
else):

* ``OverLoCK``: the backbone (:class:`overlock_mm.OverLoCKBackbone`);
* ``Float32RoIExtractor``: mmdet's ``SingleRoIExtractor`` pooling
  half-precision features in float32, for mixed-precision training (mmcv's
  ``RoIAlign`` has no bfloat16 kernels; :mod:`.roi_extractor`);
* ``Float32RPNHead``: mmdet's ``RPNHead`` decoding half-precision
  predictions into proposals in float32 (float32 anchors; mmdet rounds them
  to the predictions' dtype; :mod:`.rpn_head`).

Use from a config with::

    custom_imports = dict(imports=['mmdet_overlock'], allow_failed_imports=False)
    model = dict(backbone=dict(type='OverLoCK', arch='t', ...))
"""
from mmdet.registry import MODELS

from overlock_mm import OverLoCKBackbone, register_backbone

from .roi_extractor import Float32RoIExtractor
from .rpn_head import Float32RPNHead

register_backbone(MODELS)
register_backbone(MODELS, name='Float32RoIExtractor',
                  module=Float32RoIExtractor)
register_backbone(MODELS, name='Float32RPNHead', module=Float32RPNHead)

__all__ = ['OverLoCKBackbone', 'Float32RoIExtractor', 'Float32RPNHead']
