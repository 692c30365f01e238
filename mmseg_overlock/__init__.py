"""Registers ``OverLoCK`` in MMSegmentation 1.x's ``MODELS`` registry (and
does nothing else).

Use from a config with::

    custom_imports = dict(imports=['mmseg_overlock'], allow_failed_imports=False)
    model = dict(backbone=dict(type='OverLoCK', arch='t', fuse_overview=False))
"""
from mmseg.registry import MODELS

from overlock_mm import OverLoCKBackbone, register_backbone

register_backbone(MODELS)

__all__ = ['OverLoCKBackbone']
