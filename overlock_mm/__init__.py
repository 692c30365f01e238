"""mmengine glue shared by ``mmdet_overlock`` and ``mmseg_overlock``.

* :class:`OverLoCKBackbone`: :class:`overlock.OverLoCK` as an mmengine
  ``BaseModule`` (``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads
  through :func:`overlock.load_checkpoint`);
* :func:`register_backbone`: adds it to a registry as ``'OverLoCK'``;
* :mod:`overlock_mm.runtime`: what ``tools/train.py`` and ``tools/test.py``
  need (CPU runtime, ``--eval`` metrics, safe resuming, config -> model);
* :mod:`overlock_mm.runner`: their runner (mmengine's, with the ``compile``
  option working), :mod:`overlock_mm.console` its brief-console variant.

Importing it changes nothing global. It imports torch, mmengine and
:mod:`overlock`, never mmdet, mmseg or mmpretrain.
"""
from .backbone import OverLoCKBackbone, register_backbone

__all__ = ['OverLoCKBackbone', 'register_backbone']
