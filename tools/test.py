#!/usr/bin/env python
"""Test a detector (mmdet 3.x), segmentor (mmseg 1.x) or classifier
(mmpretrain 1.x) checkpoint; the config's ``default_scope`` decides.

    python tools/test.py CONFIG CKPT [--eval bbox segm | mIoU | accuracy ece]
    bash tools/dist_test.sh CONFIG CKPT GPUS [ARGS]

``--eval`` keeps the habit of mmdet 2.x / mmseg 0.x: it sets the metrics of
the config's COCO / IoU evaluator, or (classification) makes the test
evaluator top-1 / top-5 accuracy and / or the expected calibration error.
``--out`` dumps the raw results, ``--show-dir`` saves drawings of the
predictions. Classification checkpoints (official ImageNet ones, plain or
``_reparam`` with ``--cfg-options model.deploy=True``, or our own) load
strictly through :func:`overlock.load_checkpoint`: a checkpoint that does not
fit the model is an error, not a partial load.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402

from overlock_mm.console import CONSOLE_MODES, runner_class  # noqa
from overlock_mm.runtime import (EVAL_METRICS, apply_eval_metrics,  # noqa
                                 distributed_run, run_program,
                                 mmengine_checkpoints,
                                 prepare_runtime)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test (and evaluate) a model')
    p.add_argument('config', help='test config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='the dir to save evaluation logs')
    p.add_argument(
        '--eval', nargs='+', metavar='METRIC',
        help='metrics: ' + '; '.join(f'{k}: {" ".join(v)}'
                                     for k, v in EVAL_METRICS.items()))
    p.add_argument('--out', help='dump the predictions to this pickle file '
                   '(detection, classification) or folder (segmentation)')
    p.add_argument('--show', action='store_true', help='show predictions')
    p.add_argument('--show-dir', help='save drawings of the predictions here')
    p.add_argument('--wait-time', type=float, default=2)
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value')
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


def _visualize(cfg, args, scope):
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show/--show-dir need a visualization hook in '
                           'default_hooks')
    vis = hooks['visualization']
    if scope == 'mmpretrain':
        vis['enable'] = True
        if args.show:
            vis['show'] = True
            vis['wait_time'] = args.wait_time
        if args.show_dir:
            vis['out_dir'] = osp.abspath(args.show_dir)
        return
    vis['draw'] = True
    if args.show:
        vis['show'] = True
        vis['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            vis['test_out_dir'] = osp.abspath(args.show_dir)


def main(argv=None):
    args = parse_args(argv)
    if '::' not in args.config and not osp.isfile(args.config):
        raise FileNotFoundError(f'config not found: {args.config}')
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope', 'mmdet')
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.eval:
        apply_eval_metrics(cfg, args.eval)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    # classifiers load strictly after the runner is built (mmengine's
    # load_from would load whatever fits and only warn about the rest)
    cfg.load_from = None if scope == 'mmpretrain' else args.checkpoint
    if args.show or args.show_dir:
        _visualize(cfg, args, scope)
    if args.out and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    prepare_runtime(cfg, args.launcher)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg \
        else runner_class(args.console).from_cfg(cfg)
    if args.out and scope in ('mmdet', 'mmpretrain'):
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl or .pickle file')
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults as Dump
        else:
            from mmengine.evaluator import DumpResults as Dump
        runner.test_evaluator.metrics.append(Dump(out_file_path=args.out))
    with mmengine_checkpoints():
        if scope == 'mmpretrain':
            from mmengine.logging import MMLogger
            from mmengine.model import is_model_wrapper

            from overlock import load_checkpoint
            model = runner.model.module if is_model_wrapper(runner.model) \
                else runner.model
            load_checkpoint(model, args.checkpoint,
                            logger=MMLogger.get_current_instance())
        with distributed_run():
            return runner.test()


if __name__ == '__main__':
    run_program(main)
