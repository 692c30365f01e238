#!/usr/bin/env python
"""ATen against the Triton kernels for every depthwise convolution of a
model: forward, input gradient and weight gradient, per shape and dtype.

    python tools/analysis/bench_dwconv_gpu.py                       # OverLoCK-T, 800x1216, batch 2, fp16 + fp32
    python tools/analysis/bench_dwconv_gpu.py --dtype bf16 --json dw.json

The shapes are those the model's depthwise convolutions see in a forward
at ``--size`` (large kernels, dilated branches, 3x3 and 5x5 ones); each is
timed once however many layers share it, and the totals weight it by that
count: what one training step spends in depthwise convolutions with each
choice, and with the faster one per shape and pass (``faster`` per row in
the ``--json`` file: the table a per-shape choice would be built from). Timings are medians of
CUDA-event timings (on CPU, wall time: ``--device cpu`` needs
``TRITON_INTERPRET=1`` and times the interpreter, so only checks that the
tool runs). This decides which depthwise convolutions
``overlock.ops.depthwise_conv2d`` should send to Triton on a GPU.
"""
import argparse
import collections
import json
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import overlock  # noqa: E402

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
PASSES = ('fwd', 'dx', 'dw')


def model_shapes(arch, size, batch, device):
    """``{(C, H, W, K, dilation): layers}`` of the depthwise convolutions a
    forward of ``OverLoCK(arch)`` runs on a ``batch x 3 x size`` input."""
    model = overlock.OverLoCK(arch).to(device).train()  # the training path
    counts = collections.Counter()

    def hook(module, args):
        _, c, h, w = args[0].shape
        counts[(c, h, w, module.kernel_size[0], module.dilation[0])] += 1

    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and \
                m.groups == m.in_channels == m.out_channels:
            m.register_forward_pre_hook(hook)
    with torch.no_grad(), overlock.options(kernels='torch'):
        model(torch.randn(2, 3, *size, device=device))  # train-mode BN
    return {(c, h, w, k, d): n for (c, h, w, k, d), n in counts.items()}


def _timer(device, repeats, warmup):
    def run(fn):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == 'cuda':
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return run


def bench_shape(shape, batch, dtype, device, timeit):
    """``{'aten': {pass: ms}, 'triton': {pass: ms}}`` for one shape."""
    from overlock.ops import triton_dwconv
    c, h, w, k, d = shape
    pad = d * (k - 1) // 2
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    gy = torch.randn_like(x)
    wt = torch.randn(c, 1, k, k, device=device, dtype=dtype)

    def aten_backward(mask):
        return torch.ops.aten.convolution_backward(
            gy, x, wt, None, [1, 1], [pad, pad], [d, d], False, [0, 0], c,
            mask)

    return {
        'aten': {
            'fwd': timeit(lambda: F.conv2d(x, wt, None, 1, pad, d, c)),
            'dx': timeit(lambda: aten_backward([True, False, False])),
            'dw': timeit(lambda: aten_backward([False, True, False]))},
        'triton': {
            'fwd': timeit(lambda: triton_dwconv.forward(x, wt, None, pad,
                                                        d)),
            'dx': timeit(lambda: triton_dwconv.input_grad(gy, wt, pad, d)),
            'dw': timeit(lambda: triton_dwconv.weight_grad(x, gy, k, pad,
                                                           d))}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', default='t', help='Defaults to t.')
    p.add_argument('--size', type=int, nargs=2, default=(800, 1216),
                   metavar=('H', 'W'), help='Defaults to 800 1216.')
    p.add_argument('--batch', type=int, default=2, help='Defaults to 2.')
    p.add_argument('--dtype', nargs='+', default=['fp16', 'fp32'],
                   choices=list(DTYPES), help='Defaults to fp16 fp32.')
    p.add_argument('--device', default='cuda', help='Defaults to cuda.')
    p.add_argument('--repeats', type=int, default=20,
                   help='timed runs per measurement. Defaults to 20.')
    p.add_argument('--warmup', type=int, default=3, help='Defaults to 3.')
    p.add_argument('--limit', type=int, default=0,
                   help='time only the first LIMIT shapes (a quick check). '
                   'Defaults to 0: all.')
    p.add_argument('--json', help='also write the results here')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    timeit = _timer(device, args.repeats, args.warmup)
    shapes = model_shapes(args.arch, tuple(args.size), args.batch, device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else 'cpu (Triton interpreter: timings meaningless)')
    print(f'OverLoCK-{args.arch.upper()} depthwise convolutions, input '
          f'{args.size[0]}x{args.size[1]}, batch {args.batch}, {name}; '
          f'median ms of {args.repeats}')
    rows = []
    with overlock.options(kernels='triton'):
        for dname in args.dtype:
            head = ''.join(f'{f"{a} {q}":>12}' for q in PASSES
                           for a in ('aten', 'triton'))
            print(f'\n{dname:5}{"C":>5}{"H x W":>11}{"K":>4}{"dil":>4}'
                  f'{"layers":>7}{head}')
            for shape, layers in sorted(shapes.items())[
                    :args.limit or None]:
                res = bench_shape(shape, args.batch, DTYPES[dname], device,
                                  timeit)
                faster = {q: min(res, key=lambda a: res[a][q])
                          for q in PASSES}
                rows.append(dict(dtype=dname, shape=list(shape),
                                 layers=layers, faster=faster, **res))
                c, h, w, k, d = shape
                cells = ''.join(f'{res[a][q]:>12.3f}' for q in PASSES
                                for a in ('aten', 'triton'))
                print(f'{"":5}{c:>5}{f"{h}x{w}":>11}{k:>4}{d:>4}'
                      f'{layers:>7}{cells}')
    totals = {}
    for dname in args.dtype:
        mine = [r for r in rows if r['dtype'] == dname]
        tot = {a: {q: sum(r['layers'] * r[a][q] for r in mine)
                   for q in PASSES} for a in ('aten', 'triton')}
        tot['best'] = {q: sum(r['layers'] * min(r['aten'][q], r['triton'][q])
                              for r in mine) for q in PASSES}
        totals[dname] = tot
        print(f'\n{dname}: per forward + backward of all layers (ms): ' +
              '; '.join(f'{a} ' + ' + '.join(f'{tot[a][q]:.2f}'
                                             for q in PASSES) +
                        f' = {sum(tot[a].values()):.2f}'
                        for a in ('aten', 'triton', 'best')))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=name, arch=args.arch, size=args.size,
                           batch=args.batch, torch=torch.__version__,
                           rows=rows, totals=totals), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
