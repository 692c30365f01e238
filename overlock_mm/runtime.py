"""Runtime helpers of ``tools/train.py`` and ``tools/test.py`` (and of the
tests and ``tools/analysis``): CPU runtime, ``--eval`` metrics, safe resuming,
config -> model. Needs mmengine; imports mmdet / mmseg / mmpretrain only
through a config's ``custom_imports``, as the mm runner does.
"""
import contextlib
import gc
import importlib
import logging
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.logging import MMLogger

from overlock.checkpoint import allow_globals, safe_globals

__all__ = [
    'EVAL_METRICS', 'prepare_runtime', 'apply_eval_metrics', 'build_model',
    'mmengine_checkpoints', 'trains_in_bfloat16', 'float32_box_heads',
    'is_type'
]


#: ``--eval`` names of the OpenMMLab 1.x tools, per config scope.
EVAL_METRICS = {
    'mmdet': ('bbox', 'segm', 'proposal', 'proposal_fast'),
    'mmseg': ('mIoU', 'mDice', 'mFscore'),
    'mmpretrain': ('accuracy', 'ece'),
}

#: the evaluator each mmpretrain ``--eval`` name adds (unless the config's
#: test evaluator already has one of that type, whose settings are kept)
PRETRAIN_EVALUATORS = {
    'accuracy': dict(type='Accuracy', topk=(1, 5)),
    'ece': dict(type='ExpectedCalibrationError', n_bins=15),
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


@contextlib.contextmanager
def mmengine_checkpoints():
    """Inside the block, mmengine's own checkpoints save and load with
    ``torch.load(weights_only=True)`` (the default since torch 2.6), so that
    ``--resume`` works; on exit everything is as before:

    * the harmless types they carry are allowlisted (mmengine's
      ``HistoryBuffer`` and numpy arrays, scalars and dtypes, see
      :func:`overlock.checkpoint.safe_globals`);
    * mmengine stops pickling ``getattr(HistoryBuffer, 'min')`` & co. into
      new checkpoints (the functions are restored on load anyway).

    Safe loading stays on: anything else is still refused.
    """
    from mmengine.logging import HistoryBuffer
    original = HistoryBuffer.__dict__.get('__getstate__')
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    try:
        with allow_globals(safe_globals() + [HistoryBuffer]):
            yield
    finally:
        if original is None:
            del HistoryBuffer.__getstate__
        else:
            HistoryBuffer.__getstate__ = original


def _replace_sync_bn(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == 'type' and (v in ('SyncBN', 'MMSyncBN', 'TorchSyncBN')
                                or is_type(obj, 'SyncBatchNorm', 'torch')):
                obj[k] = 'BN'
            else:
                _replace_sync_bn(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _replace_sync_bn(v)


#: set once a gloo process group has been destroyed in this process; see
#: :func:`exit_program`
_GLOO_WORKERS_LEFT = False


@contextlib.contextmanager
def distributed_run():
    """Wrap a tool's run so that its process group ends with it.

    On success every rank first waits for the others (a barrier: no rank
    leaves while a peer still reads its last collective), then the default
    group is destroyed, as torch asks of every distributed program. On an
    exception the group is destroyed without the barrier (a peer may be gone)
    and the exception propagates. Without a group: nothing.
    """
    try:
        yield
    except BaseException:
        _destroy_group(barrier=False)
        raise
    _destroy_group(barrier=True)


def _destroy_group(barrier: bool) -> None:
    global _GLOO_WORKERS_LEFT
    if not (dist.is_available() and dist.is_initialized()):
        return
    gloo = dist.get_backend() == 'gloo'
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    _GLOO_WORKERS_LEFT = _GLOO_WORKERS_LEFT or gloo


def exit_program(code: int = 0) -> None:
    """End a run of ``tools/train.py`` or ``tools/test.py`` as a program.

    After a gloo run the process leaves with :func:`os._exit` once the
    runner's dataloader workers are shut down and the logs and standard
    streams are flushed; otherwise with ``sys.exit(code)``.

    Why: torch never frees a gloo group once ``torch.distributed.nn`` is
    imported (DDP imports it; its functions keep ``group.WORLD`` as a
    default argument), so the group's worker threads outlive
    :func:`distributed_run`. A worker that drops the last reference to a
    finished collective's Python tensors while the interpreter finalizes
    takes the GIL of a dying interpreter and aborts the process with
    SIGABRT ("terminate called without an active exception", about 1 run in
    5 of the two-process CPU test; pytorch/pytorch#190489). Skipping the
    interpreter teardown is the only exit that cannot race with them.
    """
    if not _GLOO_WORKERS_LEFT:
        sys.exit(code)
    gc.collect()  # runners in reference cycles: their dataloader workers
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run_program(main: Callable[[], object]) -> None:
    """Run a tool's ``main()`` as a program, ending it with
    :func:`exit_program`: exit status 0, or 1 with the traceback printed
    when ``main`` raises after a gloo run (whose teardown could otherwise
    turn the failure into the abort described there). Other exceptions
    propagate as usual (argparse's exit, failures before a group exists)."""
    try:
        main()
    except BaseException:
        if not _GLOO_WORKERS_LEFT:
            raise
        traceback.print_exc()
        exit_program(1)
    exit_program(0)


def prepare_runtime(cfg, launcher: str = 'none') -> None:
    """Make a config runnable where CUDA is absent: gloo backend, DDP without
    device ids, BatchNorm instead of SyncBN (in place). With CUDA: nothing.

    With ``launcher='pytorch'`` on CPU it also initialises the process group
    (gloo), which mmengine would otherwise do with a CUDA-only call.
    """
    if torch.cuda.is_available():
        return
    _replace_sync_bn(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg)
    if cfg.get('sync_bn') is not None:  # the runner's SyncBN conversion
        cfg.sync_bn = None
    env = cfg.setdefault('env_cfg', {})
    env.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('optim_wrapper') or {}
    if isinstance(wrapper, dict) and \
            is_type(wrapper, 'AmpOptimWrapper', 'mmengine'):
        cfg.optim_wrapper.type = 'OptimWrapper'
        # the AmpOptimWrapper-only keys (mmengine 0.10.7's AMP wrapper
        # refuses to build without a GPU)
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            cfg.optim_wrapper.pop(key, None)
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


def _type_of(module: dict):
    """``(name, scope, origin)`` of a config node's ``type``:

    * a registry string (``'RPNHead'``, ``'mmdet.RPNHead'``): its scope
      (``''`` if none), no origin;
    * a module path (``'mmdet.models.dense_heads.rpn_head.RPNHead'``, as
      ``cfg.dump()`` writes a pure-Python config's types), a class, or a
      pure-Python config's lazy import (mmengine's ``LazyObject`` /
      ``LazyAttr``, read without importing anything): no scope, the module
      as origin.
    """
    from mmengine.config.lazy import LazyAttr, LazyObject
    kind = dict.get(module, 'type')  # unbuilt: a ConfigDict builds lazies
    if isinstance(kind, str):
        scope, _, name = kind.rpartition('.')
        if '.' in scope:
            return name, None, scope
        return name, scope, None
    if isinstance(kind, (LazyObject, LazyAttr)):
        return str(kind), None, kind.module
    if isinstance(kind, type):
        return kind.__name__, None, kind.__module__
    return None, None, None


def is_type(module: dict, name: str, package: str,
            scopes: Optional[Sequence[str]] = None,
            default_scope: Optional[str] = None) -> bool:
    """Whether a config node's ``type`` is ``package``'s class ``name``: the
    class imported from ``package`` or its submodules (a class, a lazy
    import, a module path), or a registry string of that name whose scope
    (the string's, else ``default_scope``) is in ``scopes`` (``None``: any
    scope, for classes every registry inherits, e.g. mmengine's)."""
    found, scope, origin = _type_of(module)
    if found != name:
        return False
    if origin is not None:
        return origin == package or origin.startswith(package + '.')
    scope = scope or default_scope
    return scopes is None or scope is None or scope in scopes


def trains_in_bfloat16(cfg) -> bool:
    """Whether ``cfg`` trains with mmengine's ``AmpOptimWrapper`` in
    bfloat16 (``--amp --cfg-options optim_wrapper.dtype=bfloat16``; in a
    pure-Python config ``type=AmpOptimWrapper``, ``dtype='bfloat16'`` or
    ``torch.bfloat16``)."""
    wrapper = cfg.get('optim_wrapper') or {}
    return isinstance(wrapper, dict) and \
        is_type(wrapper, 'AmpOptimWrapper', 'mmengine') and \
        str(wrapper.get('dtype')).endswith('bfloat16')


#: mmdet_overlock's float32 modules and the mmdet ones they replace
_FLOAT32_OF = {'Float32RPNHead': 'RPNHead',
               'Float32RoIExtractor': 'SingleRoIExtractor'}


def float32_box_heads(cfg) -> list:
    """Make an mmdet two-stage detector train in bfloat16 with its boxes in
    float32: each ``SingleRoIExtractor`` of its RoI head (``bbox_``,
    ``mask_``, ``semantic_``, ... ``roi_extractor``, one per cascade stage
    or one for all) becomes ``mmdet_overlock``'s ``Float32RoIExtractor``
    (mmcv's ``RoIAlign`` has no bfloat16 kernels) and an ``RPNHead``
    becomes ``Float32RPNHead`` (mmdet rounds the anchors to the
    predictions' dtype, shifting the proposals by up to 7 pixels in
    bfloat16). Both are mmdet's modules in float32. The detector is
    ``cfg.model``, or ``cfg.model.detector`` for wrappers such as
    SoftTeacher. A registry string keeps its scope prefix
    (``mmdet.RPNHead`` -> ``mmdet.Float32RPNHead``) and ``mmdet_overlock``
    joins ``custom_imports`` (the caller imports it: this module never
    imports mmdet); in a pure-Python config (``type=RPNHead``, imported
    from mmdet) the new type is a lazy import of ``mmdet_overlock``'s class,
    as the config would write it. Returns the keys changed (none for other
    models), e.g. ``['model.rpn_head',
    'model.roi_head.bbox_roi_extractor']``."""
    model = cfg.get('model') or {}
    prefix = 'model'
    if 'rpn_head' not in model and 'roi_head' not in model and \
            isinstance(model.get('detector'), dict):
        model, prefix = model['detector'], 'model.detector'
    changed, registered = [], []

    default_scope = cfg.get('default_scope')

    def swap(module, ours, key):
        # (a registry string of another scope may name a project's own
        # class of that name: left alone)
        if not isinstance(module, dict) or not is_type(
                module, _FLOAT32_OF[ours], 'mmdet', ('mmdet', ),
                default_scope):
            return
        kind = dict.get(module, 'type')
        if isinstance(kind, str):
            _, scope, origin = _type_of(module)
            module['type'] = f'mmdet_overlock.{ours}' if origin else \
                (f'{scope}.{ours}' if scope else ours)
            registered.append(key)
        else:
            from mmengine.config.lazy import LazyObject
            module['type'] = getattr(LazyObject('mmdet_overlock'), ours)
        changed.append(key)

    swap(model.get('rpn_head'), 'Float32RPNHead', f'{prefix}.rpn_head')
    roi_head = model.get('roi_head') or {}
    for key in sorted(k for k in roi_head if k.endswith('_roi_extractor')):
        found = roi_head[key]
        stages = enumerate(found) if isinstance(found, list) else [(None,
                                                                    found)]
        for stage, extractor in stages:  # a list: one per cascade stage
            swap(extractor, 'Float32RoIExtractor',
                 f'{prefix}.roi_head.{key}' + (
                     '' if stage is None else f'[{stage}]'))
    custom = dict(cfg.get('custom_imports') or {})
    imports = list(custom.get('imports') or [])
    if registered and 'mmdet_overlock' not in imports:
        cfg['custom_imports'] = dict(custom,
                                     imports=imports + ['mmdet_overlock'])
    return changed


def apply_eval_metrics(cfg, metrics) -> None:
    """Map the 1.x ``--eval`` habit onto the config's test evaluator.

    Detection: ``bbox``, ``segm``, ``proposal`` (COCO metric). Segmentation:
    ``mIoU``, ``mDice``, ``mFscore`` (IoU metric). Classification:
    ``accuracy`` (top-1 / top-5), ``ece`` (expected calibration error): the
    test evaluator becomes these metrics, in that order.

    Raises:
        ValueError: a metric that the config's task does not have.
    """
    scope = cfg.get('default_scope', 'mmdet')
    valid = EVAL_METRICS.get(scope)
    if valid is None:
        raise ValueError(f'--eval is supported for mmdet, mmseg and '
                         f'mmpretrain configs, this config has '
                         f'default_scope={scope!r}')
    bad = [m for m in metrics if m not in valid]
    if bad:
        raise ValueError(f'Unknown --eval metric(s) {bad} for a {scope} '
                         f'config; valid: {" ".join(valid)}.')
    evaluators = cfg.test_evaluator
    if isinstance(evaluators, dict):
        evaluators = [evaluators]
    if scope == 'mmpretrain':
        chosen = []
        for m in dict.fromkeys(metrics):
            default = PRETRAIN_EVALUATORS[m]
            chosen.append(next(
                (e for e in evaluators if e.get('type') == default['type']),
                dict(default)))
        cfg.test_evaluator = chosen
        return
    key = 'metric' if scope == 'mmdet' else 'iou_metrics'
    want = 'CocoMetric' if scope == 'mmdet' else 'IoUMetric'
    target = next((e for e in evaluators if e.get('type') == want), None)
    if target is None:
        raise ValueError(f'--eval needs a {want} in test_evaluator; this '
                         f'config has {[e.get("type") for e in evaluators]}')
    target[key] = list(metrics)


def build_model(cfg, pretrained: bool = False):
    """Build the detector / segmentor / classifier of a config as the mm
    runner would (its ``custom_imports`` imported, its ``default_scope`` set),
    with the CPU adaptations of :func:`prepare_runtime` and, unless
    ``pretrained``, without loading pretrained weights (the backbone's
    ``init_cfg``, or the classifier's)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    prepare_runtime(cfg)
    if not pretrained:
        if 'backbone' in cfg.model:
            cfg.model.backbone.init_cfg = None
        else:
            cfg.model.init_cfg = None
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in EVAL_METRICS:
        raise ValueError(f'expected an mmdet, mmseg or mmpretrain config, '
                         f'got default_scope={scope!r}')
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    return registry.MODELS.build(cfg.model)
