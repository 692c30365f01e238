#!/usr/bin/env python
"""Large-kernel depthwise convolution on CPU: time each way of computing the
forward and the two gradients, for the shapes OverLoCK uses.

    python tools/analysis/bench_dwconv.py                  # OverLoCK-T shapes at 512x512, batch 1
    python tools/analysis/bench_dwconv.py --size 800 1216 --batch 1

Columns: forward channels-first / channels-last; input gradient by autograd
(channels-first, channels-last) and as a channels-last forward convolution
with the flipped kernel; weight gradient by autograd. These measurements
decide what ``overlock.ops.depthwise_conv2d`` does on CPU.
"""
import argparse
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def timeit(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_shape(c, h, w, k, batch, repeats):
    x = torch.randn(batch, c, h, w)
    wt = torch.randn(c, 1, k, k)
    gy = torch.randn(batch, c, h, w)
    xl = x.contiguous(memory_format=torch.channels_last)
    gyl = gy.contiguous(memory_format=torch.channels_last)
    pad = k // 2
    res = {}
    res['fwd_cf'] = timeit(lambda: F.conv2d(x, wt, None, 1, pad, 1, c),
                           repeats)
    res['fwd_cl'] = timeit(lambda: F.conv2d(xl, wt, None, 1, pad, 1, c),
                           repeats)

    def autograd_bwd(inp, g, need_w):
        xi = inp.detach().requires_grad_(True)
        wi = wt.detach().requires_grad_(need_w)
        y = F.conv2d(xi, wi, None, 1, pad, 1, c)
        y.backward(g)

    res['dx_cf'] = timeit(lambda: autograd_bwd(x, gy, False), repeats) - \
        res['fwd_cf']
    res['dx_cl'] = timeit(lambda: autograd_bwd(xl, gyl, False), repeats) - \
        res['fwd_cl']
    wflip = wt.flip(-1, -2)
    res['dx_flip_cl'] = timeit(
        lambda: F.conv2d(gyl, wflip, None, 1, pad, 1, c), repeats)
    res['dxdw_cf'] = timeit(lambda: autograd_bwd(x, gy, True), repeats) - \
        res['fwd_cf']
    res['dxdw_cl'] = timeit(lambda: autograd_bwd(xl, gyl, True), repeats) - \
        res['fwd_cl']
    return res


# (channels, stride, kernel) of OverLoCK-T's large-kernel convolutions
T_SHAPES = [(64, 4, 17), (128, 8, 15), (256, 16, 13), (512, 32, 7),
            (512, 32, 7)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, nargs=2, default=(512, 512))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    cols = ['fwd_cf', 'fwd_cl', 'dx_cf', 'dx_cl', 'dx_flip_cl', 'dxdw_cf',
            'dxdw_cl']
    print(f'batch {args.batch}, input {h}x{w}, {torch.get_num_threads()} '
          f'threads, median ms of {args.repeats}')
    print(f'{"C":>5}{"H x W":>11}{"K":>4}' + ''.join(f'{c:>12}' for c in cols))
    seen = set()
    for c, s, k in T_SHAPES:
        hs, ws = -(-h // s), -(-w // s)
        if (c, hs, ws, k) in seen:
            continue
        seen.add((c, hs, ws, k))
        r = bench_shape(c, hs, ws, k, args.batch, args.repeats)
        print(f'{c:>5}{f"{hs}x{ws}":>11}{k:>4}' +
              ''.join(f'{r[col]:>12.1f}' for col in cols))


if __name__ == '__main__':
    main()
