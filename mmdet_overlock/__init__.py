"""Registers ``OverLoCK`` in MMDetection 3.x's ``MODELS`` registry.

Use from a config with::

    custom_imports = dict(imports=['mmdet_overlock'], allow_failed_imports=False)
    model = dict(backbone=dict(type='OverLoCK', arch='t', ...))
"""
from mmdet.registry import MODELS

from overlock.mm import OverLoCKBackbone

MODELS.register_module('OverLoCK', module=OverLoCKBackbone, force=True)

__all__ = ['OverLoCKBackbone']

from overlock.mm import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()
