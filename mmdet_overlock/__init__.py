"""Registers ``OverLoCK`` in MMDetection 3.x's ``MODELS`` registry (and does
nothing else).

Use from a config with::

    custom_imports = dict(imports=['mmdet_overlock'], allow_failed_imports=False)
    model = dict(backbone=dict(type='OverLoCK', arch='t', ...))
"""
from mmdet.registry import MODELS

from overlock_mm import OverLoCKBackbone, register_backbone

register_backbone(MODELS)

__all__ = ['OverLoCKBackbone']
