#!/usr/bin/env python
"""What a bug report needs, and a check of OverLoCK's kernels on this machine.

    python tools/misc/collect_env.py                 # versions, GPUs, switches
    python tools/misc/collect_env.py --check         # + kernels and backbone
    python tools/misc/collect_env.py --check --device cuda --json env.json

The environment is mmengine's ``collect_env()`` (Python, PyTorch, CUDA, GPUs,
compilers) plus the packages OverLoCK works with (timm, triton, natten, the
implicit-GEMM package, mmcv and whether its ops are built, mmdet,
mmsegmentation, mmpretrain), OverLoCK's switches (``overlock.get_options()``
and the ``OVERLOCK_*`` / ``TRITON_INTERPRET`` variables) and which ContMix
aggregation the device runs.

``--check`` runs, on the device and in each dtype it supports (float32, and
on CUDA float16 / bfloat16; on CPU bfloat16), the ContMix aggregation and
the large-kernel depthwise convolutions forward and backward (on CUDA twice:
as dispatched, and forced onto the Triton kernels, which the dispatch uses
only where they win the timing and agree with ATen), and a backbone's
training step and eval forward (autocast for half precision), against the
same computation in float64 on CPU. It prints each relative error with its
limit and exits with 1 if one is over or a check raises (its error is the
row): a kernel miscompiled for a new GPU or Triton version shows here. The
kernels' limits are the test suite's; the backbone's are set to catch a
broken kernel (errors of order 1), not to grade rounding, which grows with
depth (bfloat16: ~2 % for XT, ~4 % for S). float32 on CUDA runs with TF32
off. Afterwards it lists what the depthwise convolutions chose per shape
(ATen or Triton).
"""
import argparse
import collections
import contextlib
import importlib.metadata
import json
import os
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

import overlock  # noqa: E402
from overlock import OverLoCK  # noqa: E402
from overlock.ops import (accelerator_status, contmix_aggregate,  # noqa: E402
                          contmix_aggregate_reference, depthwise_conv2d)

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16,
          'bf16': torch.bfloat16}
#: relative error limits of the kernels (max |error| / max |reference|, as
#: tests/test_triton_contmix.py and tests/test_triton_dwconv.py) ...
CONTMIX_LIMIT = {torch.float32: 1e-5, torch.float16: 4e-3,
                 torch.bfloat16: 3e-2}
DWCONV_LIMIT = {torch.float32: 1e-5, torch.float16: 4e-3,
                torch.bfloat16: 2e-2}
#: ... and of the backbone (relative L2, (outputs, gradients); half
#: precision: autocast), far above rounding (measured on CPU: XT float32
#: 1e-6 / 1e-5, float16 2e-3 / 4e-3, bfloat16 2e-2 / 3e-2; S bfloat16 4e-2)
#: and far below a broken kernel's errors
MODEL_LIMIT = {torch.float32: (1e-3, 1e-3), torch.float16: (0.05, 0.1),
               torch.bfloat16: (0.15, 0.25)}
#: ContMix ``(B, G, H, W, C, K)``: odd sizes, the model's smallest and
#: largest kernels
CONTMIX_CASES = [(2, 2, 15, 17, 8, 5), (1, 2, 19, 18, 16, 13)]
#: depthwise ``(C, H, W, K, dilation)``: a 17x17 large kernel and a
#: dilated branch of the re-param blocks
DWCONV_CASES = [(16, 40, 36, 17, 1), (16, 33, 31, 7, 3)]
PACKAGES = ('timm', 'triton', 'natten', 'depthwise-conv2d-implicit-gemm',
            'mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain', 'numpy')


def environment(device: Optional[str] = None) -> Dict[str, str]:
    """Ordered ``{name: value}`` of the environment (see the module
    docstring)."""
    from mmengine.utils.dl_utils import collect_env
    env = collections.OrderedDict(
        (k, str(v)) for k, v in collect_env().items()
        # (a page of build flags; the seed of this process)
        if k not in ('PyTorch compiling details', 'numpy_random_seed'))
    env['cuDNN'] = str(torch.backends.cudnn.version())
    for name in PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = 'not installed'
    if env['mmcv'] != 'not installed':
        env['mmcv ops'] = _mmcv_ops()
    env['overlock'] = overlock.__version__
    env['overlock options'] = json.dumps(overlock.get_options())
    variables = {k: v for k, v in sorted(os.environ.items())
                 if k.startswith('OVERLOCK_') or k == 'TRITON_INTERPRET'}
    env['overlock variables'] = json.dumps(variables) if variables \
        else 'none'
    env['accelerators'] = ', '.join(
        f'{name} {"yes" if found else "no"}'
        for name, found in accelerator_status().items())
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    env[f'ContMix on {device}'] = contmix_backend(device)
    return env


def _mmcv_ops() -> str:
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    except Exception as exc:  # an import of a compiled extension
        return f'not built ({type(exc).__name__}: {exc})'
    return (f'built with {get_compiler_version()}, CUDA '
            f'{get_compiling_cuda_version()}')


def contmix_backend(device: str) -> str:
    """The ContMix aggregation a map on ``device`` runs (the dispatch's own
    tests on a tiny tensor)."""
    from overlock.ops.accelerators import triton_kernels
    from overlock.ops.contmix import uses_natten
    value = torch.zeros(1, 1, 1, 1, 1, device=device)
    if uses_natten(value):
        return 'natten na2d_av'
    try:
        if triton_kernels(value) is not None:
            return 'Triton kernels'
    except RuntimeError as exc:
        return f'error: {exc}'
    return f'PyTorch ({overlock.get_options()["contmix"]}: band or slices)'


def _rel_max(a: torch.Tensor, ref: torch.Tensor) -> float:
    a = a.detach().double().cpu()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a = a.detach().double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


class Row(collections.namedtuple('Row', 'what dtype errors limit')):
    """One check: ``errors`` ``{name: relative error}``, each within
    ``limit``."""

    @property
    def ok(self) -> bool:
        return all(e <= self.limit for e in self.errors.values())

    def line(self) -> str:
        errors = '  '.join(f'{k} {v:.1e}' for k, v in self.errors.items())
        return (f'  {self.what:<36} {self.dtype:<5} {errors}  '
                f'(limit {self.limit:.0e})  {"OK" if self.ok else "FAIL"}')


def _grads(fn: Callable, inputs: List[torch.Tensor], grad_out) -> list:
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [out] + list(grads)


def check_contmix(device: str, dtype: torch.dtype) -> List[Row]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for b, g, h, w, c, k in CONTMIX_CASES:
        attn = torch.rand(b, g, h, w, k * k, generator=gen,
                          dtype=torch.float64)
        attn = (attn / attn.sum(-1, keepdim=True)).to(dtype)
        value = torch.randn(b, g, h, w, c, generator=gen).to(dtype)
        go = torch.randn(b, g, h, w, c, generator=gen).to(dtype)
        ref = _grads(lambda a, v: contmix_aggregate_reference(a, v, k),
                     [attn.double().requires_grad_(),
                      value.double().requires_grad_()], go.double())
        got = _grads(lambda a, v: contmix_aggregate(a, v, k),
                     [attn.to(device).requires_grad_(),
                      value.to(device).requires_grad_()], go.to(device))
        errors = {name: _rel_max(a, r) for name, a, r in
                  zip(('out', 'd attn', 'd value'), got, ref)}
        rows.append(Row(f'ContMix K={k} {h}x{w}', _name(dtype), errors,
                        CONTMIX_LIMIT[dtype]))
    return rows


def check_dwconv(device: str, dtype: torch.dtype) -> List[Row]:
    """The depthwise convolutions as dispatched and, on CUDA with triton,
    forced onto the Triton kernels."""
    rows = _dwconv_rows(device, dtype, '')
    if torch.device(device).type == 'cuda' and \
            accelerator_status()['triton']:
        with overlock.options(kernels='triton'):
            rows += _dwconv_rows(device, dtype, ' (triton)')
    return rows


def _dwconv_rows(device: str, dtype: torch.dtype, label: str) -> List[Row]:
    rows = []
    gen = torch.Generator().manual_seed(1)
    for c, h, w, k, dil in DWCONV_CASES:
        pad = dil * (k - 1) // 2
        x = torch.randn(2, c, h, w, generator=gen).to(dtype)
        weight = (torch.randn(c, 1, k, k, generator=gen) / k).to(dtype)
        bias = torch.randn(c, generator=gen).to(dtype)
        go = torch.randn(2, c, h, w, generator=gen).to(dtype)
        ref = _grads(lambda *t: F.conv2d(*t, 1, pad, dil, c),
                     [t.double().requires_grad_()
                      for t in (x, weight, bias)], go.double())
        got = _grads(lambda *t: depthwise_conv2d(*t, pad, dil),
                     [t.to(device).requires_grad_()
                      for t in (x, weight, bias)], go.to(device))
        errors = {name: _rel_max(a, r) for name, a, r in
                  zip(('out', 'd x', 'd w', 'd b'), got, ref)}
        rows.append(Row(f'depthwise {k}x{k} dil {dil}, {h}x{w}{label}',
                        _name(dtype), errors, DWCONV_LIMIT[dtype]))
    return rows


def _step(model, x, dtype, device, train):
    """Outputs and (training) the parameters' gradients, flattened."""
    model.zero_grad()
    half = dtype in (torch.float16, torch.bfloat16)
    amp = torch.autocast(device, dtype=dtype) if half else \
        contextlib.nullcontext()
    with amp, torch.set_grad_enabled(train):
        outs = model.train(train)(x)
        loss = sum(o.float().square().mean() for o in outs)
    out = torch.cat([o.detach().double().flatten().cpu() for o in outs])
    if not train:
        return out, None
    loss.backward()
    return out, torch.cat([p.grad.double().flatten().cpu()
                           for p in model.parameters() if p.grad is not None])


def check_backbone(device: str, dtype: torch.dtype, arch='xt',
                   size=(64, 64)) -> List[Row]:
    """The backbone's training step (batch 2) and eval forward (batch 1) on
    ``device`` against float64 on CPU, same weights and BatchNorm state."""
    torch.manual_seed(0)
    model = OverLoCK(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, *size)
    ref = OverLoCK(arch).double()
    model.to(device)
    name = arch if isinstance(arch, str) else 'custom arch'
    limit_out, limit_grad = MODEL_LIMIT[dtype]
    rows = []
    for train in (True, False):
        inputs = x if train else x[:1]
        # the same weights and BatchNorm statistics for both
        ref.load_state_dict(state)
        model.load_state_dict(state)
        ref_out, ref_grads = _step(ref, inputs.double(), torch.float64,
                                   'cpu', train)
        out, grads = _step(model, inputs.to(device), dtype, device, train)
        kind = 'training step' if train else 'eval forward'
        rows.append(Row(f'backbone {name} {kind}', _name(dtype),
                        {'out': _rel_l2(out, ref_out)}, limit_out))
        if train:
            rows.append(Row(f'backbone {name} {kind}',
                            _name(dtype), {'grads': _rel_l2(grads, ref_grads)},
                            limit_grad))
    return rows


def _name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def default_dtypes(device: str) -> List[str]:
    if device == 'cpu':
        return ['fp32', 'bf16']
    dtypes = ['fp32', 'fp16']
    with torch.cuda.device(device):
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if native_bf16:
        dtypes.append('bf16')
    return dtypes


@contextlib.contextmanager
def _no_tf32():
    cudnn, matmul = (torch.backends.cudnn.allow_tf32,
                     torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


def check(device: str, dtypes: List[str], arch='xt', size=(64, 64),
          backbone: bool = True,
          log: Callable[[str], None] = print) -> List[Row]:
    """Every check on ``device`` in ``dtypes`` (the backbone's unless
    ``backbone`` is False); each row is logged as it comes."""
    rows = []
    checks = [('ContMix', check_contmix), ('depthwise', check_dwconv)]
    if backbone:
        checks.append(('backbone', lambda d, t: check_backbone(d, t, arch,
                                                               size)))
    on_cuda = torch.device(device).type == 'cuda'
    with _no_tf32(), (torch.cuda.device(device) if on_cuda
                      else contextlib.nullcontext()):
        for dtype in (DTYPES[d] for d in dtypes):
            for what, fn in checks:
                try:
                    found = fn(device, dtype)
                except Exception as exc:  # a check that raises fails
                    found = [Row(f'{what}: {type(exc).__name__}: '
                                 f'{str(exc)[:300]}', _name(dtype),
                                 {'error': float('inf')}, 0.)]
                for row in found:
                    log(row.line())
                    rows.append(row)
    return rows


def dwconv_choices() -> Dict[str, int]:
    """``{'aten': n, 'triton': m}``: what the half-precision depthwise
    convolutions of CUDA maps chose so far, shapes counted per pass."""
    from overlock.ops.dwconv import tuned_choices
    return dict(collections.Counter(tuned_choices().values()))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--check', action='store_true',
                   help='check the kernels and a backbone against float64')
    p.add_argument('--device', default=None,
                   help='cpu or cuda (default: cuda if available)')
    p.add_argument('--dtype', nargs='+', choices=list(DTYPES),
                   help='default: fp32 and the half dtypes the device has')
    p.add_argument('--kernels-only', action='store_true',
                   help='check the kernels, not a backbone (e.g. with '
                   'OVERLOCK_KERNELS=triton TRITON_INTERPRET=1 on CPU)')
    p.add_argument('--arch', default='xt',
                   help='the backbone of the check (default: xt)')
    p.add_argument('--size', type=int, nargs=2, default=(64, 64),
                   metavar=('H', 'W'))
    p.add_argument('--json', help='also write everything to this file')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available here; '
                         'use --device cpu')
    env = environment(device)
    width = max(map(len, env))
    for name, value in env.items():
        print(f'{name:<{width}}  {value}')
    result = dict(environment=env)
    if args.check:
        dtypes = args.dtype or default_dtypes(device)
        print(f'\ncheck on {device}, {", ".join(dtypes)} '
              '(relative errors against float64 on CPU):')
        rows = check(device, dtypes, args.arch, tuple(args.size),
                     backbone=not args.kernels_only)
        choices = dwconv_choices()
        if choices:
            print('depthwise convolutions of half-precision maps, shapes '
                  'per pass: ' + ', '.join(f'{k} {v}'
                                           for k, v in choices.items()))
        failed = [r for r in rows if not r.ok]
        print(f'{len(rows) - len(failed)} of {len(rows)} checks within '
              'their limits' + (': FAILED ' + '; '.join(
                  f'{r.what} {r.dtype}' for r in failed) if failed else ''))
        result.update(checks=[dict(r._asdict(), ok=r.ok) for r in rows],
                      dwconv_choices=choices)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return 1 if args.check and failed else 0


if __name__ == '__main__':
    sys.exit(main())
