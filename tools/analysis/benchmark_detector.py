#!/usr/bin/env python
"""Time whole-detector iterations of mm configs side by side: the model of
each config built as the runner builds it (random init: the backbones'
``init_cfg`` is dropped, nothing is downloaded), its optimizer wrapper from
the config, and generated batches (random images at ``--size`` with random
boxes and masks, ``mmdet.testing.demo_mm_inputs``) fed to ``train_step`` /
``test_step``, as the runner's loops do.

    # Mask R-CNN + OverLoCK-T 1x against mmdet's Swin-T Mask R-CNN, 1333x800
    python tools/analysis/benchmark_detector.py --device cuda --iters 20
    python tools/analysis/benchmark_detector.py --device cuda --amp bf16 \
        --configs configs/mask_rcnn_overlock_t_fpn_1x_coco.py \
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py

Times are medians (seconds per iteration; CUDA events on CUDA, wall clock
on CPU) after ``--warmup`` iterations; peak memory is
``torch.cuda.max_memory_allocated`` (CUDA only). The first config is the
baseline of the ratio column. With ``--amp bf16`` every config pools its
RoIs with ``mmdet_overlock``'s ``Float32RoIExtractor`` (ours do already;
mmcv's ``RoIAlign`` has no bfloat16 kernels).
"""
import argparse
import json
import logging
import os
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from benchmark import (COMPILE_MODES, CUDAGRAPH_MODES, error_text,  # noqa: E402
                       release_cuda)

DEFAULT_CONFIGS = [
    osp.join(ROOT, 'configs', 'mask_rcnn_overlock_t_fpn_1x_coco.py'),
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
]
AMP = {'fp32': None, 'fp16': 'float16', 'bf16': 'bfloat16'}


def _timer(device):
    import torch
    if device.startswith('cuda'):
        def timed(fn):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return timed


def _batch(model, num_classes, size, batch, seed):
    from mmdet.testing import demo_mm_inputs
    import torch
    torch.manual_seed(seed)
    w, h = size
    return demo_mm_inputs(batch_size=batch, image_shapes=[(3, h, w)] * batch,
                          num_items=[8] * batch, num_classes=num_classes,
                          with_mask=True)


def resolve(config):
    """A path, or ``PACKAGE::REL`` (a config shipped with an installed mm
    package, as in ``_base_``)."""
    if '::' not in config:
        return config
    from mmengine.utils import get_installed_path
    package, rel = config.split('::', 1)
    path = osp.join(get_installed_path(package), '.mim', 'configs', rel)
    if not osp.isfile(path):
        raise SystemExit(f'{config}: no such config in the installed '
                         f'{package} ({path})')
    return path


def measure(config, args):
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from overlock_mm.runtime import build_model, float32_box_heads
    cfg = Config.fromfile(resolve(config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    changed = float32_box_heads(cfg) if args.amp == 'bf16' else []
    if changed:
        import mmdet_overlock  # noqa: F401  (registers the modules)
        logging.getLogger('benchmark_detector').warning(
            '%s: %s keep boxes in float32 (Float32RPNHead, '
            "Float32RoIExtractor: mmcv's RoIAlign has no bfloat16 kernels)",
            config, ', '.join(changed))
    model = build_model(cfg).to(args.device)  # PyTorch's default init
    if args.compile_backbone:  # in place: parameter names unchanged
        mode = args.compile_backbone
        mode = None if mode == 'default' else mode
        if model.backbone.__module__.startswith('overlock'):
            from overlock import compile_kwargs
            model.backbone.compile(**compile_kwargs(mode=mode))
        else:
            model.backbone.compile(mode=mode)
    # CUDA graphs: every iteration is a new replay (the previous one's
    # outputs may be overwritten)
    mark_step = torch.compiler.cudagraph_mark_step_begin \
        if args.compile_backbone in CUDAGRAPH_MODES else (lambda: None)
    dtype = AMP[args.amp]
    wrapper_cfg = dict(cfg.optim_wrapper)
    if dtype is not None:
        wrapper_cfg.update(type='AmpOptimWrapper', dtype=dtype)
        if not args.device.startswith('cuda'):
            raise SystemExit('--amp needs CUDA: mmengine 0.10.7 builds its '
                             'AmpOptimWrapper only on a GPU')
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    num_classes = cfg.model.roi_head.bbox_head.num_classes \
        if 'roi_head' in cfg.model else 80
    timed = _timer(args.device)
    results = {}
    for mode in (['train', 'eval'] if args.mode == 'both' else [args.mode]):
        data = _batch(model, num_classes, args.size, args.batch, seed=0)
        if mode == 'train':
            model.train()

            def step():  # train_step enters optim_context (autocast)
                mark_step()
                model.train_step(data, optim_wrapper)
        else:
            model.eval()

            def step():
                mark_step()
                with torch.no_grad():
                    if dtype is not None:
                        with torch.autocast(args.device.split(':')[0],
                                            getattr(torch, dtype)):
                            model.test_step(data)
                    else:
                        model.test_step(data)
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = [timed(step) for _ in range(args.warmup + args.iters)]
        times = times[args.warmup:]
        peak = torch.cuda.max_memory_allocated() / 2**20 \
            if args.device.startswith('cuda') else float('nan')
        results[mode] = dict(median_s=statistics.median(times),
                             min_s=min(times), iters=len(times),
                             peak_mem_mb=peak)
    return dict(config=config, params_m=sum(
        p.numel() for p in model.parameters()) / 1e6, **results)


def main(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS)
    p.add_argument('--device', default='cpu')
    p.add_argument('--size', type=int, nargs=2, default=(1333, 800),
                   metavar=('W', 'H'), help='generated image size')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--mode', choices=['train', 'eval', 'both'],
                   default='train')
    p.add_argument('--amp', choices=list(AMP), default='fp32',
                   help='AmpOptimWrapper with this dtype (CUDA only)')
    p.add_argument('--compile-backbone', nargs='?', const='default',
                   default=None, choices=COMPILE_MODES, metavar='MODE',
                   help='torch.compile every config\'s backbone (in place, '
                   'inductor) in this mode: ' + ', '.join(COMPILE_MODES) +
                   '; the warm-up iterations take the compilation. Defaults '
                   'to no compilation')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='applied to every config')
    p.add_argument('--json', help='also write the results here')
    args = p.parse_args(argv)
    import torch
    device_name = torch.cuda.get_device_name(args.device) \
        if args.device.startswith('cuda') else 'CPU'
    logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')
    results, failed = [], []
    for config in args.configs:
        try:
            results.append(measure(config, args))
        except Exception as e:  # reported; the other configs still run
            logging.getLogger('benchmark_detector').exception(
                '%s failed', config)
            failed.append(dict(config=config, error=error_text(e)))
            continue
        finally:
            if args.device.startswith('cuda'):
                release_cuda(args.compile_backbone)
        # progress, so that an interrupted run still reports
        print(f'# {config}: ' + ', '.join(
            f'{m} {r["median_s"]:.3f} s/iter, {r["peak_mem_mb"]:.0f} MB'
            for m, r in results[-1].items() if isinstance(r, dict)),
            file=sys.stderr, flush=True)
    print(f'{device_name}, batch {args.batch}, {args.size[0]}x{args.size[1]}'
          f', {args.amp}, median of {args.iters} after {args.warmup} '
          f'warm-up' + (f', backbones compiled ({args.compile_backbone})'
                        if args.compile_backbone else ''))
    head = f'{"mode":<6}{"config":<56}{"s/iter":>9}{"min":>9}' \
           f'{"peak MB":>10}{"ratio":>8}'
    print(head)
    print('-' * len(head))
    for mode in ('train', 'eval'):
        rows = [r for r in results if mode in r]
        for r in rows:
            ratio = r[mode]['median_s'] / rows[0][mode]['median_s']
            name = osp.basename(r['config'])
            print(f'{mode:<6}{name:<56}{r[mode]["median_s"]:>9.3f}'
                  f'{r[mode]["min_s"]:>9.3f}{r[mode]["peak_mem_mb"]:>10.0f}'
                  f'{ratio:>7.2f}x')
    for r in failed:
        print(f'FAILED {r["config"]}: {r["error"]}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(device=device_name, amp=args.amp,
                           size=list(args.size), batch=args.batch,
                           compile_backbone=args.compile_backbone,
                           results=results, failed=failed), f, indent=2)
    if failed:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
