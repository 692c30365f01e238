#!/usr/bin/env python
"""Parameters and FLOPs of OverLoCK backbones, classifiers, and the detectors
/ segmentors of our configs, with the ContMix aggregation counted.

    python tools/analysis/get_flops.py                       # backbones + classifiers, all archs
    python tools/analysis/get_flops.py --config configs/mask_rcnn_overlock_t_fpn_1x_coco.py --shape 800 1333
    python tools/analysis/get_flops.py --config configs/upernet_overlock_t_512x512_160k_ade20k.py --shape 512 512

FLOPs are counted with ``torch.utils.flop_counter`` (convolutions, matrix
products, and the ContMix aggregation through the FLOP formula of its custom
op, ``B*H*W*C*K*K`` multiply-adds per call, shown in its own column) and
reported as multiply-adds (GMACs, the unit of the paper's "FLOPs").
Element-wise ops (norms, activations) are not counted, as in fvcore/mmcv.
"""
import argparse
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

PAPER_GFLOPS = {'xt': 2.6, 't': 5.5, 's': 9.7, 'b': 16.7}


def count(model, fn):
    """(counted GMACs without ContMix, ContMix GMACs) of ``fn(m)``, where
    ``m`` is a copy of ``model`` in its inference form (every OverLoCK in it
    re-parameterised: the dilated branches merged into the large kernels).

    The ContMix aggregation is the custom op ``overlock::contmix_aggregate``
    whose FLOP formula (``B*H*W*C*K*K`` multiply-adds) is registered with
    ``torch.utils.flop_counter``, so the counter sees it as one op. The model
    runs its plain layers (the fused inference path computes the same with
    oneDNN post-ops that the counter does not see) and plain convolutions
    (the CPU layout auto-tuning would be counted too).
    """
    import overlock
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, overlock.OverLoCK):
            m.reparameterize()
    contmix = torch.ops.overlock.contmix_aggregate
    with overlock.options(cpu_conv='aten', fast_inference=False), \
            FlopCounterMode(display=False) as fc, torch.no_grad():
        fn(model)
    total = fc.get_total_flops()
    agg = fc.get_flop_counts()['Global'].get(contmix, 0)
    return (total - agg) / 2e9, agg / 2e9


def params(m):
    return sum(p.numel() for p in m.parameters()) / 1e6


def backbones(archs, size):
    from overlock import OverLoCK
    print(f'{"model":<34}{"params (M)":>11}{"GMACs":>9}{"ContMix":>9}'
          f'{"total":>9}{"paper":>7}')
    for arch in archs:
        x = torch.randn(1, 3, *size)
        for name, kw in (('detection backbone', dict(fuse_overview=True)),
                         ('segmentation backbone', dict(fuse_overview=False))):
            m = OverLoCK(arch, **kw).eval()
            g, a = count(m, lambda m: m(x))
            print(f'OverLoCK-{arch.upper():<3}{name:<25}{params(m):>11.2f}'
                  f'{g:>9.2f}{a:>9.3f}{g + a:>9.2f}{"":>7}')
        x224 = torch.randn(1, 3, 224, 224)
        for name, deploy in (('classifier 224', False),
                             ('classifier 224 reparam', True)):
            m = OverLoCK(arch, num_classes=1000, deploy=deploy).eval()
            g, a = count(m, lambda m: m(x224))
            print(f'OverLoCK-{arch.upper():<3}{name:<25}{params(m):>11.2f}'
                  f'{g:>9.2f}{a:>9.3f}{g + a:>9.2f}'
                  f'{PAPER_GFLOPS[arch]:>7.1f}')


def from_config(path, shape):
    from mmengine.config import Config

    from overlock_mm.runtime import build_model
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope', 'mmdet')
    model = build_model(cfg).eval()
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
    h, w = shape
    x = torch.randn(1, 3, h, w)
    bb_g, bb_a = count(model.backbone, lambda m: m(x))
    if scope == 'mmdet':
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w),
            scale_factor=(1., 1.), batch_input_shape=(h, w)))
        g, a = count(model, lambda m: m.predict(x, [sample]))
    else:
        g, a = count(model, lambda m: m._forward(x))
    print(f'{osp.basename(path)} at {h}x{w}')
    print(f'  backbone: {params(model.backbone):.2f} M params, '
          f'{bb_g + bb_a:.1f} GMACs (ContMix {bb_a:.2f})')
    print(f'  whole model: {params(model):.2f} M params, {g + a:.1f} GMACs '
          f'(ContMix {a:.2f}; RoI ops and NMS not counted)')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', help='an mmdet/mmseg config of this repo')
    p.add_argument('--shape', type=int, nargs=2, default=None,
                   metavar=('H', 'W'))
    p.add_argument('--archs', nargs='+', default=['xt', 't', 's', 'b'])
    args = p.parse_args(argv)
    if args.config:
        from_config(args.config, tuple(args.shape or (800, 1333)))
    else:
        backbones(args.archs, tuple(args.shape or (224, 224)))


if __name__ == '__main__':
    main()
