"""mmengine adapter of :class:`overlock.OverLoCK` (imported by
``mmdet_overlock`` and ``mmseg_overlock``; needs mmengine).

The adapter adds mmengine's ``init_cfg`` to the one OverLoCK class:
``init_cfg=dict(type='Pretrained', checkpoint=PATH_OR_URL)`` goes through
:func:`overlock.load_checkpoint` (safe ``weights_only`` loading, ``backbone.``
and ``module.`` prefixes stripped, a report in the mmengine log).
"""
from typing import Optional, Union

from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from .checkpoint import load_checkpoint
from .model import OverLoCK

__all__ = ['OverLoCKBackbone']


class OverLoCKBackbone(OverLoCK, BaseModule):
    """OverLoCK as an mmengine ``BaseModule``.

    Takes the arguments of :class:`overlock.OverLoCK` plus ``init_cfg``
    (``None``, or ``dict(type='Pretrained', checkpoint=..., prefix=None)``;
    other initialisers of mmengine work as usual).
    """

    def __init__(self, *args, init_cfg: Optional[Union[dict, list]] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.init_cfg = init_cfg

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            logger = MMLogger.get_current_instance()
            OverLoCK.init_weights(self)
            prefix = cfg.get('prefix')
            ckpt = cfg['checkpoint']
            if prefix:
                from .checkpoint import safe_load
                raw = safe_load(ckpt)
                raw = raw.get('state_dict', raw.get('model', raw))
                ckpt = {
                    k[len(prefix) + 1:]: v
                    for k, v in raw.items() if k.startswith(prefix + '.')
                }
            load_checkpoint(self, ckpt, logger=logger)
            self._is_init = True
        elif cfg is None:
            if not getattr(self, '_is_init', False):
                OverLoCK.init_weights(self)
                self._is_init = True
        else:
            OverLoCK.init_weights(self)
            BaseModule.init_weights(self)
