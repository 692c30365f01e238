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
                from .checkpoint import _unwrap, safe_load
                raw = _unwrap(safe_load(ckpt))
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


# --------------------------------------------------------------------------
# Runtime helpers shared by tools/train.py and tools/test.py
# --------------------------------------------------------------------------
#: ``--eval`` names of the OpenMMLab 1.x tools, per config scope.
EVAL_METRICS = {
    'mmdet': ('bbox', 'segm', 'proposal', 'proposal_fast'),
    'mmseg': ('mIoU', 'mDice', 'mFscore'),
}


def _history_buffer_getstate(self) -> dict:
    # mmengine pickles HistoryBuffer's default statistics functions (min,
    # max, current, mean) as ``getattr(HistoryBuffer, 'min')``: a call of
    # builtins.getattr that safe loading rightly refuses. They are re-created
    # by ``__setstate__`` anyway, so only custom ones are written.
    from mmengine.logging import HistoryBuffer
    defaults = {name: getattr(HistoryBuffer, name)
                for name in ('min', 'max', 'current', 'mean')}
    state = dict(self.__dict__)
    methods = {k: v for k, v in self._statistics_methods.items()
               if defaults.get(k) is not v}
    if methods:
        state['statistics_methods'] = methods
    return state


def allow_mmengine_checkpoints() -> None:
    """Make mmengine's own checkpoints load with ``torch.load(weights_only=
    True)`` (the default since torch 2.6), so that ``--resume`` works.

    * allowlists the harmless types they carry: mmengine's ``HistoryBuffer``
      and numpy arrays, scalars and dtypes (see
      :func:`overlock.checkpoint.safe_globals`);
    * stops mmengine from pickling ``getattr(HistoryBuffer, 'min')`` & co.
      into new checkpoints (the functions are restored on load anyway).

    Safe loading stays on: anything else is still refused. Idempotent.
    """
    import torch
    from mmengine.logging import HistoryBuffer

    from .checkpoint import safe_globals
    torch.serialization.add_safe_globals(safe_globals() + [HistoryBuffer])
    HistoryBuffer.__getstate__ = _history_buffer_getstate


def _replace_sync_bn(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == 'type' and v in ('SyncBN', 'MMSyncBN', 'TorchSyncBN'):
                obj[k] = 'BN'
            else:
                _replace_sync_bn(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _replace_sync_bn(v)


def prepare_runtime(cfg, launcher: str = 'none') -> None:
    """Make a config runnable where CUDA is absent: gloo backend, DDP without
    device ids, BatchNorm instead of SyncBN (in place). With CUDA: nothing.

    With ``launcher='pytorch'`` on CPU it also initialises the process group
    (gloo), which mmengine would otherwise do with a CUDA-only call.
    """
    import os

    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        return
    _replace_sync_bn(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg)
    env = cfg.setdefault('env_cfg', {})
    env.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
        MMLogger.get_current_instance().warning(
            'No CUDA: automatic mixed precision is switched off.')
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg') or {}
        wrapper.setdefault('type', 'MMDistributedDataParallel')
        wrapper['device_ids'] = None
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
        if launcher == 'pytorch' and not dist.is_initialized():
            dist.init_process_group(
                backend='gloo', rank=int(os.environ['RANK']),
                world_size=int(os.environ['WORLD_SIZE']))


def apply_eval_metrics(cfg, metrics) -> None:
    """Map the 1.x ``--eval`` habit onto the config's test evaluator.

    Detection: ``bbox``, ``segm``, ``proposal`` (COCO metric). Segmentation:
    ``mIoU``, ``mDice``, ``mFscore`` (IoU metric).

    Raises:
        ValueError: a metric that the config's task does not have.
    """
    scope = cfg.get('default_scope', 'mmdet')
    valid = EVAL_METRICS.get(scope)
    if valid is None:
        raise ValueError(f'--eval is supported for mmdet and mmseg configs, '
                         f'this config has default_scope={scope!r}')
    bad = [m for m in metrics if m not in valid]
    if bad:
        raise ValueError(f'Unknown --eval metric(s) {bad} for a {scope} '
                         f'config; valid: {" ".join(valid)}.')
    evaluators = cfg.test_evaluator
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    key = 'metric' if scope == 'mmdet' else 'iou_metrics'
    want = 'CocoMetric' if scope == 'mmdet' else 'IoUMetric'
    target = next((e for e in evaluators if e.get('type') == want), None)
    if target is None:
        raise ValueError(f'--eval needs a {want} in test_evaluator; this '
                         f'config has {[e.get("type") for e in evaluators]}')
    target[key] = list(metrics)


def build_model(cfg, pretrained: bool = False):
    """Build the detector / segmentor of a config (its scope decides), with
    the CPU adaptations of :func:`prepare_runtime` and, unless
    ``pretrained``, without loading the backbone's ImageNet weights."""
    from mmengine.registry import init_default_scope
    prepare_runtime(cfg)
    if not pretrained:
        cfg.model.backbone.init_cfg = None
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmdet':
        import mmdet_overlock  # noqa: F401
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        import mmseg_overlock  # noqa: F401
        from mmseg.registry import MODELS
    else:
        raise ValueError(f'expected an mmdet or mmseg config, got '
                         f'default_scope={scope!r}')
    return MODELS.build(cfg.model)
