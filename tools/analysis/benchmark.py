#!/usr/bin/env python
"""Speed and memory of the OverLoCK backbone: eval-forward latency, training
step time and peak memory, for any arch / input size / batch / device, and
two implementations side by side with their ratio.

    python tools/analysis/benchmark.py --arch t --size 800 1216 --mode eval
    python tools/analysis/benchmark.py --arch t --size 512 512 --mode train \
        --compare naive ours
    python tools/analysis/benchmark.py --compare ours deploy --json out.json

Implementations (``--compare A B``):

* ``ours``: the model as shipped;
* ``naive``: written the way the official code works: channels-first
  convolutions, the dilated branches run one by one (also in eval, until
  re-parameterised), element-wise residuals and norms, every activation
  kept for the backward, and the ContMix aggregation through autograd on a
  gathered ``(K*K, C)`` neighbourhood tensor per pixel;
* ``naive_deploy``: ``naive`` re-parameterised (the official deploy form);
* ``deploy``: ``ours`` re-parameterised (dilated branches merged);
* ``channels_last``: ``ours`` with model and input in channels_last;
* ``IMPL@DIR`` (CPU): ``IMPL`` of the checkout in ``DIR``, e.g. a git
  worktree of an earlier commit, to compare a change with its base in one
  interleaved run: ``--compare ours@/tmp/base ours``;
* peers, timm ``features_only`` backbones with random weights:
  ``convnext_t``, ``resnet50``, ``swin_t`` (``--peers`` adds all three):

    python tools/analysis/benchmark.py --device cuda --size 800 1216 \
        --mode both --peers --dtype fp32 fp16 bf16 --profile

``--dtype fp16 / bf16`` runs under ``torch.autocast`` (the training step
too; its loss is summed in float32, no loss scaling is needed for timing).
On CUDA, times are CUDA-event timings of each step and ``--profile``
profiles one more step (``torch.profiler``): kernels launched, device and
host time, and the top ops by device time and by host time (on CPU: by CPU
time).

Numbers are medians over ``--rounds`` x ``--repeats`` runs, each round after
``--warmup`` runs, the rounds interleaving the implementations. On CPU
each measurement runs in a fresh process and its peak memory is the growth of
the process's peak resident set over the model's own footprint; on CUDA it is
``torch.cuda.max_memory_allocated``. Speed is never asserted in tests.
"""
import argparse
import json
import logging
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

#: peer backbones: ``name: timm model`` (features_only, random weights)
PEERS = {'convnext_t': 'convnext_tiny', 'resnet50': 'resnet50',
         'swin_t': 'swin_tiny_patch4_window7_224'}
IMPLS = ('ours', 'naive', 'naive_deploy', 'deploy', 'channels_last') + \
    tuple(PEERS)
DTYPES = {'fp32': None, 'fp16': 'float16', 'bf16': 'bfloat16'}
#: ``torch.compile`` modes (``--compile MODE``); those replaying CUDA graphs
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune',
                 'max-autotune-no-cudagraphs')
CUDAGRAPH_MODES = ('reduce-overhead', 'max-autotune')
#: glibc settings that keep freed memory in the process instead of returning
#: every large block to the OS (each fresh block then page-faults again).
#: They speed up any PyTorch CPU program; ``--malloc heap`` applies them to
#: every implementation alike.
MALLOC_SETTINGS = {'MALLOC_MMAP_MAX_': '0',
                   'MALLOC_TRIM_THRESHOLD_': str(64 << 30)}


def add_model_arguments(p: argparse.ArgumentParser, size=(512, 512),
                        batch=1, batch_help=None) -> None:
    """``--arch``, ``--flavour``, ``--size`` and ``--batch`` (this tool's and
    ``count_ops.py``'s)."""
    p.add_argument('--arch', default='t')
    p.add_argument('--flavour', default='detection',
                   choices=['detection', 'segmentation'])
    p.add_argument('--size', type=int, nargs=2, default=size,
                   metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=batch, help=batch_help)


def autocast(device: str, dtype: str):
    """``torch.autocast`` for a ``--dtype`` (disabled for fp32)."""
    import torch
    amp = DTYPES[dtype]
    return torch.autocast(device.split(':')[0],
                          dtype=getattr(torch, amp or 'float32'),
                          enabled=amp is not None)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def build(impl, arch, flavour, device, size=None):
    import torch

    if impl in PEERS:
        import timm
        kwargs = dict(img_size=tuple(size), strict_img_size=False) \
            if impl == 'swin_t' else {}
        return timm.create_model(PEERS[impl], pretrained=False,
                                 features_only=True, **kwargs).to(device)
    import overlock
    from overlock import OverLoCK
    naive = impl.startswith('naive')
    model = OverLoCK(arch, fuse_overview=flavour == 'detection',
                     selective_cp=not naive)
    # on CUDA every implementation runs in this process: set both ways
    overlock.set_options(reference=naive)
    if impl.endswith('deploy'):
        model.eval().reparameterize()
    model.to(device)
    if impl == 'channels_last':
        model.to(memory_format=torch.channels_last)
    return model


def _profile(step, cuda, top):
    """One ``step`` under ``torch.profiler``: a summary line (on CUDA:
    kernels launched, device and host time; a step whose host time exceeds
    its device time is launch-bound) and the ``top`` ops by self time on
    the device, then (CUDA) by self time on the host."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    host_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    if not cuda:
        return (f'host time {host_ms:.1f} ms (profiled)\n' + events.table(
            sort_by='self_cpu_time_total', row_limit=top))
    kernels = [e for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = sum(e.count for e in kernels)
    device_ms = sum(e.self_device_time_total for e in kernels) / 1e3
    return (f'{launches} kernels, device time {device_ms:.1f} ms, host time '
            f'{host_ms:.1f} ms (profiled)\n\nby device time\n' +
            events.table(sort_by='self_cuda_time_total', row_limit=top) +
            '\nby host time\n' +
            events.table(sort_by='self_cpu_time_total', row_limit=top))


def measure(impl, arch, flavour, mode, size, batch, device, repeats, warmup,
            threads, dtype='fp32', profile_top=0, compile=False):
    import torch
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(impl, arch, flavour, device, size)
    if compile:  # inductor; the warm-up runs take the compilation
        mode = None if compile == 'default' else compile
        if impl in PEERS:
            model = torch.compile(model, mode=mode)
        else:  # with OverLoCK's options (overlock.compiler)
            from overlock import compile_kwargs
            model = torch.compile(model, **compile_kwargs(mode=mode))
    # CUDA graphs (reduce-overhead): each step is a new replay, so that the
    # previous step's outputs may be overwritten
    mark_step = torch.compiler.cudagraph_mark_step_begin \
        if compile in CUDAGRAPH_MODES else (lambda: None)
    x = torch.randn(batch, 3, *size, device=device)
    if impl == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    cuda = device.startswith('cuda')

    if mode == 'eval':
        model.eval()

        def step():
            mark_step()
            with torch.inference_mode(), autocast(device, dtype):
                return model(x)
    else:
        if impl.endswith('deploy'):
            raise SystemExit('deploy form is for inference; use --mode eval')
        model.train()
        xg = x.requires_grad_(False)

        def step():
            mark_step()
            with autocast(device, dtype):
                outs = model(xg)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
            model.zero_grad(set_to_none=True)

    def timed():
        if cuda:  # CUDA events: the step's device time line
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    base_rss = _rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = [timed() for _ in range(warmup + repeats)][warmup:]
    peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda \
        else _rss_mb() - base_rss
    res = dict(impl=impl, arch=arch, flavour=flavour, mode=mode,
               size=list(size), batch=batch, device=device, dtype=dtype,
               device_name=torch.cuda.get_device_name(device) if cuda
               else 'CPU',
               median_ms=statistics.median(times) * 1e3,
               min_ms=min(times) * 1e3, runs=len(times),
               times_ms=[t * 1e3 for t in times],
               peak_mem_mb=peak, compiled=compile)
    if profile_top:
        res['profile'] = _profile(step, cuda, profile_top) \
            if cuda or _cpu_has_kernels(dtype) else (
                f'profile skipped: this CPU has no oneDNN {dtype} '
                f'convolutions, so PyTorch runs each {dtype} convolution '
                f'group by group (slow_conv2d: one operation per channel of '
                f'a depthwise convolution), millions of profiler events that '
                f'need many GB; profile fp32 on this CPU')
    return res


def _cpu_has_kernels(dtype: str) -> bool:
    """Whether oneDNN runs this autocast dtype's (``'fp16'`` / ``'bf16'``)
    convolutions on this CPU (:func:`overlock.ops.cpu.has_half_kernels`)."""
    import torch

    from overlock.ops.cpu import has_half_kernels
    return dtype == 'fp32' or has_half_kernels(getattr(torch, DTYPES[dtype]))


def _impl(spec):
    """``IMPL`` or ``IMPL@DIR`` (another checkout's IMPL)."""
    impl, _, tree = spec.partition('@')
    if impl not in IMPLS:
        raise argparse.ArgumentTypeError(
            f'unknown implementation {impl!r}; choose from {IMPLS}, '
            f'optionally as IMPL@DIR')
    if tree and not osp.isfile(osp.join(tree, 'tools', 'analysis',
                                        'benchmark.py')):
        raise argparse.ArgumentTypeError(
            f'{spec}: {tree} is not a checkout of this repository')
    return spec


def run_isolated(args, spec, mode, dtype):
    """One measurement in a fresh interpreter (clean peak-RSS accounting);
    ``IMPL@DIR`` runs the benchmark worker of the checkout in ``DIR``."""
    impl, _, tree = spec.partition('@')
    script = osp.join(osp.abspath(tree), 'tools', 'analysis',
                      'benchmark.py') if tree else osp.abspath(__file__)
    cmd = [sys.executable, script, '--worker', '--impl', impl,
           '--arch', args.arch, '--flavour', args.flavour, '--mode', mode,
           '--size', str(args.size[0]), str(args.size[1]), '--batch',
           str(args.batch), '--device', args.device, '--repeats',
           str(args.repeats), '--warmup', str(args.warmup), '--threads',
           str(args.threads), '--dtype', dtype, '--profile',
           str(args.profile)] + (['--compile', args.compile]
                                 if args.compile else [])
    env = dict(os.environ)
    if args.malloc == 'heap':
        env.update(MALLOC_SETTINGS)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                         env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res['impl'] = spec
    return res


def error_text(e: BaseException) -> str:
    """A failure as written into the results (type and message, bounded)."""
    return f'{type(e).__name__}: {e}'[:2000]


def release_cuda(compiled) -> None:
    """Empty the caching allocator (and the compiler's caches after a
    compiled run), so that the next measurement's peak memory and
    compilation start from scratch."""
    import torch
    if compiled:
        torch._dynamo.reset()
    torch.cuda.empty_cache()


def _measure_cuda(args, impl, mode, dtype):
    """One measurement in this process (CUDA); the caching allocator and the
    compiler's caches are emptied afterwards, so that the next
    implementation's peak memory and compilation start from scratch."""
    try:
        return measure(impl, args.arch, args.flavour, mode, tuple(args.size),
                       args.batch, args.device, args.repeats, args.warmup,
                       args.threads, dtype, args.profile, args.compile)
    finally:
        release_cuda(args.compile)


def _run_mode(args, mode, dtype, failed):
    """Every implementation in ``mode`` / ``dtype``, ``--rounds`` times
    interleaved; one pooled result per implementation. An implementation
    that fails (out of memory, a compiler error) is logged with its
    traceback, added to ``failed`` and skipped from then on: the others
    are still measured."""
    impls = [i for i in dict.fromkeys(args.compare)
             if not (mode == 'train' and
                     i.partition('@')[0].endswith('deploy'))]
    rounds = {impl: [] for impl in impls}
    broken = set()
    # rounds interleave the implementations, so that a slow phase of a
    # shared machine does not fall on one of them only
    for _ in range(args.rounds):
        for impl in impls:
            if impl in broken:
                continue
            try:
                if args.device.startswith('cuda'):
                    res = _measure_cuda(args, impl, mode, dtype)
                else:
                    res = run_isolated(args, impl, mode, dtype)
                    res['malloc'] = args.malloc
            except Exception as e:  # reported, the run goes on
                logging.getLogger('benchmark').exception(
                    '%s %s %s failed', mode, dtype, impl)
                broken.add(impl)
                failed.append(dict(impl=impl, mode=mode, dtype=dtype,
                                   error=error_text(e)))
                continue
            rounds[impl].append(res)
            # progress, so that an interrupted run still reports
            print(f'# {mode} {dtype} {impl}: {res["median_ms"]:.1f} ms, '
                  f'{res["peak_mem_mb"]:.0f} MB', file=sys.stderr,
                  flush=True)
    results = []
    for impl in impls:
        if impl in broken:
            continue
        res = dict(rounds[impl][0])
        times = [t for r in rounds[impl] for t in r['times_ms']]
        res.update(median_ms=statistics.median(times), min_ms=min(times),
                   runs=len(times), times_ms=times, rounds=args.rounds,
                   peak_mem_mb=max(r['peak_mem_mb'] for r in rounds[impl]))
        results.append(res)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument('--device', default='cpu')
    p.add_argument('--mode', choices=['eval', 'train', 'both'], default='eval')
    p.add_argument('--compare', nargs='+', type=_impl, default=['ours'],
                   help='implementations to run; the first is the baseline '
                   'of the ratio column')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--rounds', type=int, default=1,
                   help='run every implementation this many times, '
                   'interleaved, each in a fresh process; the statistics '
                   'pool all runs')
    p.add_argument('--threads', type=int, default=0,
                   help='torch threads (0: torch default)')
    p.add_argument('--malloc', choices=['default', 'heap'],
                   default='default',
                   help='CPU: glibc malloc as configured (default) or with '
                   'MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_ '
                   '(applied to all implementations alike)')
    p.add_argument('--peers', action='store_true',
                   help='also run ' + ', '.join(PEERS) + ' (timm, '
                   'features_only, random weights)')
    p.add_argument('--dtype', nargs='+', choices=list(DTYPES),
                   default=['fp32'],
                   help='fp32, or autocast to fp16 / bf16 (several: each)')
    p.add_argument('--profile', type=int, nargs='?', const=15, default=0,
                   metavar='TOP', help='print the TOP kernels of one step '
                   '(torch.profiler; default 15)')
    p.add_argument('--compile', nargs='?', const='default', default=None,
                   choices=COMPILE_MODES, metavar='MODE',
                   help='torch.compile every implementation (inductor; '
                   'ours with overlock.compile_kwargs) in this mode: ' + ', '.join(COMPILE_MODES) + ' (CUDA '
                   'graphs: reduce-overhead, max-autotune); the warm-up '
                   'runs take the compilation. Defaults to no compilation; '
                   '--compile alone is the default mode')
    p.add_argument('--json', help='also write the results here')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--impl', default='ours', help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        res = measure(args.impl, args.arch, args.flavour, args.mode,
                      tuple(args.size), args.batch, args.device, args.repeats,
                      args.warmup, args.threads, args.dtype[0], args.profile,
                      args.compile)
        print(json.dumps(res))
        return
    if args.peers:
        args.compare = list(args.compare) + [
            p for p in PEERS if p not in args.compare]

    if args.device != 'cpu' and any('@' in c for c in args.compare):
        p.error('IMPL@DIR runs in separate processes: CPU only')
    logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')
    modes = ['eval', 'train'] if args.mode == 'both' else [args.mode]
    results, failed = [], []
    for mode in modes:
        for dtype in args.dtype:
            results += _run_mode(args, mode, dtype, failed)
    device_name = results[0]['device_name'] if results else args.device
    print(f'OverLoCK-{args.arch.upper()} {args.flavour}, input '
          f'{args.batch}x3x{args.size[0]}x{args.size[1]}, '
          f'{device_name} ({args.device}), median of '
          f'{args.rounds} x {args.repeats} after {args.warmup} warm-up' +
          (f', torch.compile ({args.compile})' if args.compile else '') +
          (f', malloc {args.malloc}' if args.device == 'cpu' else ''))
    slow = [d for d in args.dtype if args.device == 'cpu' and
            not _cpu_has_kernels(d)]
    if slow:
        print(f'note: this CPU has no oneDNN {"/".join(slow)} convolutions; '
              f'PyTorch falls back to per-group kernels, many times slower '
              f'than fp32, for every model alike')
    width = max([15] + [len(r['impl']) + 2 for r in results])
    head = f'{"mode":<6}{"dtype":<6}{"impl":<{width}}{"median ms":>11}' \
           f'{"min ms":>10}{"peak MB":>10}{"speed-up":>10}{"mem ratio":>11}'
    print(head)
    print('-' * len(head))
    for mode in modes:
        for dtype in args.dtype:
            rows = [r for r in results
                    if r['mode'] == mode and r['dtype'] == dtype]
            if not rows:
                continue
            base = rows[0]
            for r in rows:
                speed = base['median_ms'] / r['median_ms']
                mem = r['peak_mem_mb'] / base['peak_mem_mb'] \
                    if base['peak_mem_mb'] > 0 else float('nan')
                print(f'{mode:<6}{dtype:<6}{r["impl"]:<{width}}'
                      f'{r["median_ms"]:>11.1f}{r["min_ms"]:>10.1f}'
                      f'{r["peak_mem_mb"]:>10.0f}{speed:>9.2f}x{mem:>10.2f}x')
    for r in results:
        if r.get('profile'):
            print(f'\nprofile: {r["mode"]} {r["dtype"]} {r["impl"]}')
            print(r['profile'])
    for r in failed:
        print(f'FAILED {r["mode"]} {r["dtype"]} {r["impl"]}: {r["error"]}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:  # failures as entries with 'error'
            json.dump(results + failed, f, indent=2)
    if failed:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
