#!/usr/bin/env python
"""Build an OverLoCK backbone, optionally load weights, and report per-stage
output shapes, parameter counts and eval-forward timing.

    python tools/analysis/backbone_demo.py --arch t --size 512 512
    python tools/analysis/backbone_demo.py --arch t --weights overlock_t_in1k_224.pth
"""
import argparse
import logging
import statistics
import time

import torch

from overlock import OverLoCK, load_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--arch', default='t', help='xt, t, s or b (default t)')
    p.add_argument('--flavour', choices=['detection', 'segmentation'],
                   default='detection')
    p.add_argument('--weights', help='checkpoint path or URL to load')
    p.add_argument('--size', type=int, nargs=2, default=(512, 512),
                   metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--deploy', action='store_true',
                   help='re-parameterise before timing')
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')

    model = OverLoCK(args.arch, fuse_overview=args.flavour == 'detection')
    if args.weights:
        load_checkpoint(model, args.weights)
    if args.deploy:
        model.reparameterize()
    model.eval().to(args.device)
    x = torch.randn(args.batch, 3, *args.size, device=args.device)

    total = sum(p.numel() for p in model.parameters())
    print(f'OverLoCK-{args.arch.upper()} ({args.flavour} flavour'
          f'{", deploy" if args.deploy else ""}): {total / 1e6:.2f} M parameters')
    groups = [('stem + stage 1', model.stage_modules(0) + model.stage_modules(1)),
              ('stage 2', model.stage_modules(2)),
              ('stage 3 (+ Overview-Net)', model.stage_modules(3)),
              ('stage 4', model.stage_modules(4))]
    times = []
    with torch.inference_mode():
        outs = model(x)  # warm-up
        for _ in range(args.repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    print(f'input {tuple(x.shape)}')
    print(f'{"stage":<28}{"output shape":<24}{"stride":>7}{"params (M)":>12}')
    for (name, mods), out, stride in zip(groups, outs, model.strides):
        n = sum(p.numel() for m in mods for p in m.parameters())
        print(f'{name:<28}{str(tuple(out.shape)):<24}{stride:>7}{n / 1e6:>12.2f}')
    print(f'eval forward: median {statistics.median(times) * 1e3:.1f} ms over '
          f'{len(times)} runs on {args.device}')


if __name__ == '__main__':
    main()
