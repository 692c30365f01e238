#!/usr/bin/env python
"""Compile every Triton kernel variant the model launches with Triton's real
GPU compiler (to PTX and cubin), on a machine without a GPU, and print what
``ptxas`` made of it: registers per thread, local-memory spills, shared
memory.

    python tools/analysis/triton_compile.py                    # OverLoCK-T, 800x1216, sm_80 + sm_90
    python tools/analysis/triton_compile.py --arch xt --size 224 224 --cc 90
    python tools/analysis/triton_compile.py --json variants.json

The test suite runs the kernels in Triton's interpreter, which accepts code
the compiler refuses (and never allocates registers); this tool closes that
gap. It runs the backbone forward and backward on CPU with
``kernels='triton'``, but *records* each kernel launch instead of executing
it (the outputs are uninitialised; only the
launches matter), in float32 and under float16 / bfloat16 autocast. Each
distinct launch (kernel, argument dtypes, compile-time constants, and the
divisibility-by-16 specialisation Triton derives from the arguments) is then
compiled for each ``--cc`` (compute capability) with the options Triton's
launcher would use. Triton's ``ptxas`` and ``cuobjdump`` come with the
triton wheel; nothing else is needed.
"""
import argparse
import collections
import contextlib
import functools
import json
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

# Compiled kernels must be JITFunctions, and the interpreter switch changes
# what the code generator does (K = 3 and 5 loops fail to compile with it
# on): off before triton is imported, whatever the caller's environment.
os.environ['TRITON_INTERPRET'] = '0'
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import (JITFunction,  # noqa: E402
                                create_function_from_signature)

import overlock  # noqa: E402
from overlock.ops import triton_contmix, triton_dwconv  # noqa: E402,F401

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
#: what the recorder specialises arguments for; only the pointer element
#: types and the divisibility of integers matter, the same on every target
_RECORD_TARGET = GPUTarget('cuda', 90, 32)
_RESOURCES = re.compile(r'Function (\S+):\s*REG:(\d+) STACK:(\d+) '
                        r'SHARED:(\d+) LOCAL:(\d+)')


class Variant(collections.namedtuple(
        'Variant', 'name fn signature constexprs attrs options')):
    """One compilable kernel variant (hashable: dedupes the launches)."""

    def named_constexprs(self) -> dict:
        names = _jit(self.fn).arg_names
        return {names[k[0]]: v for k, v in sorted(self.constexprs)}

    def describe(self) -> str:
        names = _jit(self.fn).arg_names
        consts = ','.join(f'{k}={v}'
                          for k, v in self.named_constexprs().items())
        # the half-precision type if any pointer has one (float32 ContMix
        # weights go with half values under autocast), else the first
        pointers = [v[1:] for _, v in self.signature if v.startswith('*')]
        dtype = next((p for p in pointers if p in ('fp16', 'bf16')),
                     pointers[0])
        div16 = ','.join(names[k[0]] for k, v in self.attrs
                         if 'divisibility' in v and
                         not self.signature[k[0]][1].startswith('*'))
        return f'{self.name}[{dtype}]({consts}' + \
            (f'; {div16} %16=0)' if div16 else ')')


@functools.lru_cache(maxsize=None)
def _jit(fn):
    """A compilable ``JITFunction`` of a kernel's Python function (the
    interpreter's wrapper cannot be compiled)."""
    return JITFunction(fn)


@functools.lru_cache(maxsize=None)
def _binder(fn):
    """``(jit, backend, binder)``: Triton's argument specialiser for ``fn``
    (built once: the model launches each kernel many times)."""
    jit = _jit(fn)
    backend = make_backend(_RECORD_TARGET)
    return jit, backend, create_function_from_signature(
        jit.signature, jit.params, backend)


def _variant(kernel, args, kwargs) -> Variant:
    """The variant Triton's launcher would compile for these arguments."""
    jit, backend, binder = _binder(kernel.fn)
    bound, spec, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = jit._pack_args(
        backend, kwargs, bound, spec, options)
    return Variant(
        kernel.fn.__name__.lstrip('_'), kernel.fn,
        tuple(signature.items()), tuple(constexprs.items()),
        tuple((k, json.dumps(v)) for k, v in sorted(attrs.items())),
        tuple(sorted(options.items())))


@contextlib.contextmanager
def record_launches():
    """Within the block, launching a Triton kernel records its
    :class:`Variant` in the yielded list (in first-launch order, no repeats)
    and runs nothing."""
    seen = {}

    def run(self, *args, grid, warmup, **kwargs):
        seen.setdefault(_variant(self, args, kwargs), None)

    saved = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}
    for cls in saved:
        cls.run = run
    # kernels='triton' refuses CPU tensors unless the interpreter is on;
    # nothing is interpreted here (the kernels are JITFunctions, not run)
    interpret = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    launches = []
    try:
        yield launches
    finally:
        for cls, fn in saved.items():
            cls.run = fn
        os.environ['TRITON_INTERPRET'] = interpret or '0'
        launches.extend(seen)


def model_variants(arch, size, batch=1, dtypes=('fp32', 'fp16', 'bf16'),
                   **model_kwargs):
    """The kernel variants one training step of ``OverLoCK(arch)`` (forward
    and backward; ``dtypes`` other than fp32 under CPU autocast) launches on
    inputs of ``size``."""
    model = overlock.OverLoCK(arch, **model_kwargs).train()
    x = torch.randn(batch, 3, *size)
    variants = []
    for name in dtypes:
        dtype = DTYPES[name]
        with overlock.options(kernels='triton'), record_launches() as got, \
                torch.autocast('cpu', dtype=dtype,
                               enabled=dtype != torch.float32):
            outs = model(x.requires_grad_(False))
            sum(o.float().sum() for o in outs).backward()
        model.zero_grad(set_to_none=True)
        variants += [v for v in got if v not in variants]
    return variants


def _tool(name):
    bundled = osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia',
                       'bin', name)
    return bundled if osp.exists(bundled) else name


def resources(cubin: bytes) -> dict:
    """``{'regs', 'stack', 'shared', 'local'}`` of a one-kernel cubin, as
    ``cuobjdump --dump-resource-usage`` reports them (bytes but regs)."""
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool('cuobjdump'), '--dump-resource-usage',
                               f.name], capture_output=True, text=True,
                              check=True).stdout
    match = _RESOURCES.search(' '.join(text.split()))
    if match is None:
        raise RuntimeError(f'cannot read cuobjdump output:\n{text}')
    regs, stack, shared, local = map(int, match.groups()[1:])
    return dict(regs=regs, stack=stack, shared=shared, local=local)


def compile_variant(variant: Variant, cc: int) -> dict:
    """Compile for compute capability ``cc`` (e.g. 90); raises what the
    compiler raises. Returns the resources, Triton's shared-memory figure,
    warps, PTX size and compile seconds."""
    target = GPUTarget('cuda', cc, 32)
    options = make_backend(target).parse_options(dict(variant.options))
    src = ASTSource(_jit(variant.fn), dict(variant.signature),
                    dict(variant.constexprs),
                    {k: json.loads(v) for k, v in variant.attrs})
    t0 = time.perf_counter()
    kernel = triton.compile(src, target=target, options=options.__dict__)
    seconds = time.perf_counter() - t0
    return dict(resources(kernel.asm['cubin']), cc=cc,
                triton_shared=kernel.metadata.shared,
                num_warps=kernel.metadata.num_warps,
                ptx_lines=kernel.asm['ptx'].count('\n'), seconds=seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='t',
                        help='official arch name. Defaults to t.')
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1216),
                        metavar=('H', 'W'),
                        help='input size. Defaults to 800 1216.')
    parser.add_argument('--cc', type=int, nargs='+', default=(80, 90),
                        help='compute capabilities to compile for. '
                        'Defaults to 80 90.')
    parser.add_argument('--dtype', nargs='+', default=list(DTYPES),
                        choices=list(DTYPES),
                        help='Defaults to fp32 fp16 bf16.')
    parser.add_argument('--json', help='write the table to this file')
    args = parser.parse_args(argv)
    knobs.compilation.always_compile = False
    t0 = time.perf_counter()
    variants = model_variants(args.arch, tuple(args.size),
                              dtypes=args.dtype)
    print(f'{len(variants)} kernel variants launched by one training step '
          f'of OverLoCK-{args.arch.upper()} at {args.size[0]}x{args.size[1]} '
          f'({" ".join(args.dtype)}), recorded in '
          f'{time.perf_counter() - t0:.1f} s; compiling for '
          f'{", ".join(f"sm_{c}" for c in args.cc)}')
    rows, failures = [], []
    print(f'{"kernel variant":58s} {"cc":>3s} {"regs":>4s} {"spill":>5s} '
          f'{"smem":>6s} {"warps":>5s} {"s":>5s}')
    for variant in variants:
        for cc in args.cc:
            try:
                row = compile_variant(variant, cc)
            except Exception as e:  # report every failure, then exit 1
                failures.append((variant.describe(), cc, repr(e)))
                print(f'{variant.describe():58s} {cc:3d} FAILED: {e!r}')
                continue
            row.update(variant=variant.describe(), kernel=variant.name,
                       dtype=variant.describe().split('[')[1].split(']')[0],
                       constexprs=variant.named_constexprs())
            rows.append(row)
            print(f'{row["variant"]:58s} {cc:3d} {row["regs"]:4d} '
                  f'{row["local"]:5d} {row["triton_shared"]:6d} '
                  f'{row["num_warps"]:5d} {row["seconds"]:5.2f}')
    spills = [r for r in rows if r['local'] or r['stack']]
    print(f'{len(rows)} compiled, {len(failures)} failed, {len(spills)} '
          f'with local-memory spills; most registers per thread: '
          f'{max((r["regs"] for r in rows), default=0)}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(rows=rows, failures=failures), f, indent=1)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
