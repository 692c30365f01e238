"""Registers ``OverLoCK`` in MMSegmentation 1.x's ``MODELS`` registry.

Use from a config with::

    custom_imports = dict(imports=['mmseg_overlock'], allow_failed_imports=False)
    model = dict(backbone=dict(type='OverLoCK', arch='t', fuse_overview=False))
"""
from mmseg.registry import MODELS

from overlock.mm import OverLoCKBackbone

MODELS.register_module('OverLoCK', module=OverLoCKBackbone, force=True)

__all__ = ['OverLoCKBackbone']

from overlock.mm import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()
