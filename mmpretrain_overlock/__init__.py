"""Registers OverLoCK in MMPretrain 1.x (and does nothing else):

* ``OverLoCK`` (the backbone, :class:`overlock_mm.OverLoCKBackbone`) and
  ``OverLoCKClassifier`` (the ImageNet classifier with upstream's ``head`` /
  ``aux_head`` and auxiliary loss) in ``MODELS``;
* ``ExpectedCalibrationError`` (:mod:`overlock_mm.calibration`) in
  ``METRICS``.

Use from a config with::

    custom_imports = dict(imports=['mmpretrain_overlock'],
                          allow_failed_imports=False)
    model = dict(type='OverLoCKClassifier', arch='t', num_classes=1000)
"""
from mmpretrain.registry import METRICS, MODELS

from overlock_mm import OverLoCKBackbone, register_backbone
from overlock_mm.calibration import ExpectedCalibrationError

from .classifier import OverLoCKClassifier

register_backbone(MODELS)
register_backbone(MODELS, name='OverLoCKClassifier', module=OverLoCKClassifier)
register_backbone(METRICS, name='ExpectedCalibrationError',
                  module=ExpectedCalibrationError)

__all__ = ['OverLoCKBackbone', 'OverLoCKClassifier', 'ExpectedCalibrationError']
