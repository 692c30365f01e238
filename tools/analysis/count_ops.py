#!/usr/bin/env python
"""Operations of one backbone training step or eval forward: ours against
the timm peers, counted with a ``TorchDispatchMode`` (views and bare
allocations excluded). On a GPU each operation is a kernel launch, and our
step there is launch-bound (see docs/performance.md, "On GPUs"), so the count is
the device-free measure of that overhead. Training rows also show the
activation memory the forward keeps for the backward (``saved MB``: each
storage once; the peak's main part, without parameters, gradients and
workspaces):

    python tools/analysis/count_ops.py --arch t --size 256 256 --peers
    python tools/analysis/count_ops.py --cuda-path --dtype fp32 bf16 --top 15

``py calls`` (CPU): the Python function calls of the step (modules,
autograd functions, the recomputation, ...; C functions not counted):
on a GPU, whose step is launch-bound, the host's Python work around the
kernels, here measured without one.

``--cuda-path`` (CPU) counts the path CUDA takes instead of the CPU's:
ATen depthwise convolutions, no CPU fused inference flavour (the generic
one CUDA runs), NCHW, the PyTorch ContMix aggregation. Casts under CPU
autocast follow CPU autocast's op lists, which differ a little from CUDA's.

``--device fake-cuda`` (any machine) runs on fake CUDA tensors
(:mod:`fake_cuda`): the dispatch a GPU takes, exactly (the Triton ContMix
op when triton is installed, CUDA autocast's casts), at any size in
seconds, but **forward only**: training rows count the training forward
and what it keeps for the backward (the backward needs a CUDA context)::

    python tools/analysis/count_ops.py --device fake-cuda --size 800 1216 \
        --dtype fp32 fp16 --peers

Each implementation runs one step first (caches built), then the counted
one.
"""
import argparse
import collections
import contextlib
import json
import os
import os.path as osp
import sys
import warnings
import weakref

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

from benchmark import (DTYPES, PEERS, add_model_arguments,  # noqa: E402
                       autocast, build)

#: operations that launch nothing (besides views)
NO_KERNEL = ('aten.empty', 'aten.empty_strided', 'aten.empty_like',
             'aten.new_empty', 'aten.lift_fresh', 'aten.split',
             'aten.split_with_sizes', 'aten.unbind')


def _counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            # prim.*: metadata queries (fake tensors dispatch ``.device``)
            if not func.is_view and name not in NO_KERNEL and \
                    not name.startswith('prim.'):
                self.ops[name] += 1
            return func(*args, **(kwargs or {}))

    return Count()


@contextlib.contextmanager
def cuda_path(enabled: bool):
    """On CPU, the dispatch CUDA takes (see the module docstring)."""
    if not enabled:
        yield
        return
    import overlock
    from overlock import fused
    native = fused.native_cpu
    fused.native_cpu = lambda x: False
    try:
        with overlock.options(cpu_conv='aten', kernels='torch'):
            yield
    finally:
        fused.native_cpu = native


def count(impl, arch, flavour, mode, size, batch, dtype='fp32',
          emulate_cuda=False, device='cpu'):
    """``(Counter of the operations, bytes kept for the backward, Python
    calls)`` of one step (after one uncounted; the bytes: 0 in eval; the
    calls: ``None`` on fake tensors, whose dispatch is Python)."""
    import torch
    torch.manual_seed(0)
    fake = None
    if device == 'fake-cuda':
        from fake_cuda import FakeCuda
        fake = FakeCuda()
        model = fake.module(build(impl, arch, flavour, 'cpu', size))
        x = fake.randn(batch, 3, *size)
        half = DTYPES[dtype] and getattr(torch, DTYPES[dtype])
        amp = lambda: fake.autocast(half)  # noqa: E731
    else:
        model = build(impl, arch, flavour, device, size)
        x = torch.randn(batch, 3, *size, device=device)
        amp = lambda: autocast(device, dtype)  # noqa: E731
    model.train(mode == 'train')

    packed = []  # weak references to what the forward saved
    saved = []  # bytes kept at the end of the last counted forward

    def keep(t):
        box = _Kept(t)
        packed.append(weakref.ref(box))
        return box

    def step():
        packed.clear()
        with amp():
            if mode == 'eval':
                with torch.no_grad():
                    return model(x)
            with torch.autograd.graph.saved_tensors_hooks(keep,
                                                          _Kept.unpack):
                outs = model(x)
            saved.append(_kept_bytes(packed))
            loss = sum(o.float().mean() for o in outs)
        if fake is not None:  # the backward needs a CUDA context
            return
        loss.backward()
        model.zero_grad(set_to_none=True)

    with cuda_path(emulate_cuda and impl not in PEERS), \
            (fake or contextlib.nullcontext()), warnings.catch_warnings():
        # the folded-weight cache keys on data pointers: fake ones are 0
        warnings.filterwarnings('ignore', 'Accessing the data pointer')
        step()
        calls = _python_calls(step) if fake is None else None
        saved.clear()
        with _counter() as counter:
            step()
    return counter.ops, sum(saved), calls


def _python_calls(fn) -> int:
    """Python function calls (C functions not counted) that ``fn()`` makes,
    in this thread (a CPU backward runs in it): the Python work a GPU step
    adds around its kernels, measured without a GPU."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == 'call':
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


class _Kept:
    """A saved tensor as autograd holds it: alive at the end of the forward
    only if the graph still needs it (a recomputed segment saves its
    inputs; what it computes inside is not kept, and not seen here)."""
    __slots__ = ('tensor', '__weakref__')

    def __init__(self, tensor):
        self.tensor = tensor

    def unpack(self):
        return self.tensor


def _kept_bytes(packed) -> int:
    """Bytes of the distinct storages of the still-saved tensors (all
    alive: no address was reused among them)."""
    storages = {}
    for ref in packed:
        box = ref()
        if box is not None:
            storage = box.tensor.untyped_storage()
            # the storage object itself (fake tensors' data pointers are 0)
            storages[storage._cdata] = storage.nbytes()
    return sum(storages.values())


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, size=(256, 256), batch=2,
                        batch_help='training batch (eval runs batch 1)')
    p.add_argument('--mode', choices=['eval', 'train', 'both'],
                   default='both')
    p.add_argument('--dtype', nargs='+', choices=list(DTYPES),
                   default=['fp32', 'bf16'],
                   help='fp32, or autocast to fp16 / bf16')
    p.add_argument('--peers', action='store_true',
                   help='also count ' + ', '.join(PEERS))
    p.add_argument('--cuda-path', action='store_true',
                   help='CPU: count the path CUDA takes')
    p.add_argument('--device', default='cpu',
                   help="cpu, cuda, or fake-cuda: the CUDA dispatch on fake "
                   "tensors, on any machine (forward only)")
    p.add_argument('--top', type=int, default=0,
                   help="print our TOP operations of each row's step")
    p.add_argument('--json', help='also write the counts here')
    args = p.parse_args(argv)
    if args.cuda_path and args.device != 'cpu':
        p.error('--cuda-path emulates CUDA on CPU: use --device cpu')

    impls = ['ours'] + (list(PEERS) if args.peers else [])
    modes = ['eval', 'train'] if args.mode == 'both' else [args.mode]
    rows = []
    for mode in modes:
        for dtype in args.dtype:
            for impl in impls:
                ops, saved, calls = count(
                    impl, args.arch, args.flavour, mode, tuple(args.size),
                    args.batch if mode == 'train' else 1, dtype,
                    args.cuda_path, args.device)
                rows.append(dict(impl=impl, mode=mode, dtype=dtype,
                                 ops=sum(ops.values()), by_op=dict(ops),
                                 saved_mb=saved / 2**20,
                                 python_calls=calls))
                print(f'# {mode} {dtype} {impl}: {rows[-1]["ops"]} ops',
                      file=sys.stderr, flush=True)
    print(f'OverLoCK-{args.arch.upper()} {args.flavour}, '
          f'{args.size[0]}x{args.size[1]}, train batch {args.batch}, eval '
          f'batch 1, {args.device}' +
          (', the CUDA path' if args.cuda_path else '') +
          (': training rows are the forward only' if args.device ==
           'fake-cuda' and 'train' in modes else ''))
    py = args.device != 'fake-cuda'
    print(f'{"mode":<6}{"dtype":<6}{"impl":<12}{"ops":>8}{"ratio":>9}' +
          (f'{"py calls":>10}{"ratio":>8}' if py else '') +
          f'{"saved MB":>10}{"ratio":>8}')
    for mode in modes:
        for dtype in args.dtype:
            group = [r for r in rows
                     if r['mode'] == mode and r['dtype'] == dtype]
            for r in group:
                ratio = group[0]['ops'] / r['ops']
                py_col = (f'{r["python_calls"]:>10}'
                          f'{group[0]["python_calls"] / r["python_calls"]:>7.1f}x'
                          if py else '')
                mem = (f'{r["saved_mb"]:>10.1f}'
                       f'{group[0]["saved_mb"] / r["saved_mb"]:>7.2f}x'
                       if mode == 'train' else '')
                print(f'{mode:<6}{dtype:<6}{r["impl"]:<12}{r["ops"]:>8}'
                      f'{ratio:>8.1f}x{py_col}{mem}')
    if args.top:
        for r in rows:
            if r['impl'] == 'ours':
                print(f'\nours, {r["mode"]} {r["dtype"]}:')
                ops = collections.Counter(r['by_op'])
                for name, n in ops.most_common(args.top):
                    print(f'{n:>8}  {name}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
