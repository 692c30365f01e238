#!/usr/bin/env python
"""Train a detector (mmdet 3.x), segmentor (mmseg 1.x) or classifier
(mmpretrain 1.x) from a config; the config's ``default_scope`` decides which.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    bash tools/dist_train.sh CONFIG GPUS [ARGS]

Where CUDA is absent it runs on CPU processes (gloo, DDP without device ids,
BatchNorm for SyncBN).
"""
import argparse
import logging
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402

from overlock_mm.console import CONSOLE_MODES, runner_class  # noqa
from overlock_mm.runtime import (distributed_run, run_program,  # noqa
                                 float32_box_heads, is_type,
                                 mmengine_checkpoints, prepare_runtime,
                                 trains_in_bfloat16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Train a detector, segmentor or classifier')
    p.add_argument('config', help='train config file path')
    p.add_argument('--work-dir', help='the dir to save logs and models')
    p.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir '
        'when no path is given')
    p.add_argument('--amp', action='store_true',
                   help='automatic mixed precision training')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the learning rate by the total batch size')
    p.add_argument('--no-validate', action='store_true',
                   help='skip the validation during training')
    p.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (e.g. '
        'train_cfg.max_iters=100)')
    p.add_argument(
        '--console', choices=CONSOLE_MODES, default='full',
        help='brief: progress and results on the terminal, the config and '
        'environment dumps and per-parameter lines only in the log file')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                   default='none', help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args) -> Config:
    """The config as the arguments make it (before the runtime's
    device-dependent changes, :func:`prepare_runtime`)."""
    if '::' not in args.config and not osp.isfile(args.config):
        raise FileNotFoundError(f'config not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if is_type(cfg.optim_wrapper, 'AmpOptimWrapper', 'mmengine'):
            print_log('AMP is already on in this config.', logger='current',
                      level=logging.WARNING)
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    wrapper = cfg.get('optim_wrapper') or {}
    if wrapper.get('dtype') is not None and (
            'type' not in wrapper or
            is_type(wrapper, 'OptimWrapper', 'mmengine')):
        # ``--cfg-options optim_wrapper.dtype=bfloat16`` alone: the dtype is
        # AmpOptimWrapper's (OptimWrapper would stop with a TypeError)
        print_log(f"optim_wrapper.dtype={wrapper.get('dtype')}: training with "
                  'AmpOptimWrapper (automatic mixed precision), as --amp '
                  'does.', logger='current', level=logging.WARNING)
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
    if trains_in_bfloat16(cfg):
        # mmcv's RoIAlign would stop the first iteration, and mmdet's RPN
        # would decode its proposals from bfloat16 anchors
        changed = float32_box_heads(cfg)
        if changed:
            import mmdet_overlock  # noqa: F401  (registers the modules)
            print_log(f'bfloat16: {", ".join(changed)} keep boxes in float32 '
                      "(Float32RPNHead: float32 anchors; Float32RoIExtractor: "
                      "mmcv's RoIAlign has no bfloat16 kernels)",
                      logger='current', level=logging.WARNING)
    if args.auto_scale_lr:
        if cfg.get('auto_scale_lr') is None:
            raise ValueError('--auto-scale-lr needs auto_scale_lr='
                             'dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume: no checkpoint at {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    prepare_runtime(cfg, args.launcher)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg \
        else runner_class(args.console).from_cfg(cfg)
    with mmengine_checkpoints():
        with distributed_run():
            runner.train()


if __name__ == '__main__':
    run_program(main)
