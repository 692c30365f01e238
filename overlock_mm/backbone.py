"""OverLoCK as an mmengine ``BaseModule``, and its registration."""
import inspect
import logging
from typing import Optional, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from overlock.checkpoint import load_checkpoint
from overlock.compiler import compile_kwargs
from overlock.model import OverLoCK

from .runtime import is_type

__all__ = ['OverLoCKBackbone', 'register_backbone']

#: the arguments of ``torch.compile`` besides the model
_COMPILE_ARGS = set(inspect.signature(torch.compile).parameters) - {'model'}


class OverLoCKBackbone(OverLoCK, BaseModule):
    """OverLoCK as an mmengine ``BaseModule``.

    Takes the arguments of :class:`overlock.OverLoCK` plus ``init_cfg``:

    * ``None``: the random initialisation of the constructor stays (it runs
      once);
    * ``dict(type='Pretrained', checkpoint=PATH_OR_URL, prefix=None)``:
      :meth:`init_weights` loads the checkpoint through
      :func:`overlock.load_checkpoint` (safe ``weights_only`` loading,
      containers unwrapped and ``prefix.`` / ``backbone.`` / ``module.``
      stripped once, a report in the mmengine log);
    * any other mmengine initialiser: applied by ``BaseModule``.

    and ``compile``: ``torch.compile`` the backbone alone, in place
    (``nn.Module.compile``: parameter names and checkpoints unchanged), while
    the rest of the detector or segmentor runs eagerly. ``True`` for
    ``torch.compile``'s defaults or a dict of its arguments (``mode``,
    ``backend``, ``dynamic``, ``fullgraph``, ``options``; inductor's layout
    optimisation is turned off, see :mod:`overlock.compiler`); in a config
    ``model.backbone.compile=True`` or ``--cfg-options
    model.backbone.compile.mode=max-autotune-no-cudagraphs``. The backbone
    traces as one graph; with varying image sizes it compiles once for the
    first size and once more, with dynamic sizes, for all the others (with
    ``dynamic=None``, the default). Defaults to False.
    """

    def __init__(self, *args, init_cfg: Optional[Union[dict, list]] = None,
                 compile: Union[bool, dict] = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_cfg = init_cfg
        if compile:
            options = {} if compile is True else compile
            if not isinstance(options, dict) or set(options) - _COMPILE_ARGS:
                raise ValueError(
                    f'OverLoCKBackbone(compile=...) takes True or a dict of '
                    f'torch.compile arguments {sorted(_COMPILE_ARGS)}, got '
                    f'{compile!r}')
            options = compile_kwargs(**options)
            self.compile(**options)
            MMLogger.get_current_instance().info(
                'OverLoCK backbone: torch.compile(%s), compiled on its first '
                'call', ', '.join(f'{k}={v!r}' for k, v in options.items()))

    def init_weights(self):
        """``init_cfg``: a ``Pretrained`` one (alone, or in a list, applied
        after the others as mmengine does) loads through
        :func:`overlock.load_checkpoint` (strict: a checkpoint that does not
        fit is an error naming the keys); the others are mmengine's."""
        cfg = self.init_cfg
        if cfg is None:
            return
        cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
        if not all(isinstance(c, dict) and 'type' in c for c in cfgs):
            raise TypeError(
                'OverLoCK init_cfg takes a dict with a type, or a list of '
                "them, e.g. dict(type='Pretrained', checkpoint='ckpt.pth'), "
                f'got {cfg!r}')
        pretrained = [c for c in cfgs if _is_pretrained(c)]
        others = [c for c in cfgs if not _is_pretrained(c)]
        if len(pretrained) > 1:
            raise ValueError('OverLoCK init_cfg has more than one Pretrained '
                             f'entry: {pretrained!r}; keep one')
        if others:
            self.init_cfg = others if isinstance(cfg, (list, tuple)) \
                else others[0]
            try:
                BaseModule.init_weights(self)
            finally:
                self.init_cfg = cfg
        if pretrained:
            if pretrained[0].get('checkpoint') is None:
                raise ValueError(
                    "OverLoCK init_cfg Pretrained needs checkpoint=PATH_OR_"
                    f"URL, got {pretrained[0]!r}")
            load_checkpoint(self, pretrained[0]['checkpoint'],
                            prefix=pretrained[0].get('prefix'),
                            logger=MMLogger.get_current_instance())
        self._is_init = True


def _is_pretrained(cfg: dict) -> bool:
    return is_type(cfg, 'Pretrained', 'mmengine') or \
        is_type(cfg, 'PretrainedInit', 'mmengine')


def register_backbone(registry, name: str = 'OverLoCK',
                      module: Optional[type] = None) -> None:
    """Register ``module`` (default :class:`OverLoCKBackbone`) in
    ``registry`` under ``name``.

    Importing the registering package twice is harmless; another class
    already registered under ``name`` is an error (nothing is replaced).

    Args:
        registry (mmengine.registry.Registry): Where to register.
        name (str): The name configs use as ``type``. Defaults to
            ``'OverLoCK'``.
        module (type, optional): The class to register. Defaults to None
            (:class:`OverLoCKBackbone`).
    """
    module = OverLoCKBackbone if module is None else module
    existing = registry.module_dict.get(name)
    if existing is module:
        return
    if existing is not None:
        raise KeyError(
            f'{registry.scope}.{registry.name} already has a module named '
            f'{name!r} ({existing.__module__}.{existing.__qualname__}); '
            f'{module.__name__} would replace it. Remove the other '
            f'registration, or register ours under another name with '
            f"overlock_mm.register_backbone(MODELS, name='...') and use that "
            f'name as the type in the config.')
    registry.register_module(name, module=module)
    logging.getLogger(__name__).debug('registered %s in %s.%s', name,
                                      registry.scope, registry.name)
