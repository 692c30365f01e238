#!/usr/bin/env python
"""Re-parameterise a trained OverLoCK checkpoint: merge every dilated branch
(and its BatchNorm) into its large kernel.

    python tools/model_converters/reparameterize.py IN.pth OUT.pth [--arch t] [--shape 224 224] [--tol 1e-4]

IN may be an ImageNet classifier (official release, timm, or a whole
mmpretrain model), a detector (mmdet: the backbone under ``backbone.``) or a
segmentor (mmseg). Only the OverLoCK tensors change; necks, heads and
``meta`` are kept, optimizer and other training state are dropped. The arch
is read from the tensor shapes (``--arch`` to give it: a name or a JSON arch
dict).

Before writing, the outputs of the original model and of a ``deploy=True``
model loaded strictly from the result are compared on a random input: the
largest difference must be at most ``tol * max(1, max|output|)``
(``--tol``, default 1e-4). OUT then loads strictly into
``OverLoCK(..., deploy=True)``, the ``overlock_*_reparam`` timm models
(classifiers) and mm configs with ``deploy=True`` in the backbone.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from overlock.checkpoint import CheckpointError, safe_load  # noqa: E402
from overlock.convert import reparameterize_checkpoint  # noqa: E402


def parse_arch(text):
    """``--arch``: a name (``t``, ``overlock_t``) or a JSON arch dict."""
    if text is None or not text.strip().startswith('{'):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f'--arch is neither an arch name nor a JSON dict: '
                         f'{e}') from None


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='trained checkpoint (path or URL)')
    p.add_argument('dst', help='where to write the deploy checkpoint')
    p.add_argument('--arch', default=None,
                   help='arch name or JSON arch dict (default: read from the '
                        'checkpoint)')
    p.add_argument('--shape', type=int, nargs=2, default=(224, 224),
                   metavar=('H', 'W'), help='size of the random check input')
    p.add_argument('--tol', type=float, default=1e-4,
                   help='allowed difference relative to max(1, max|output|)')
    args = p.parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        raise SystemExit('OUT must differ from IN (the original is kept).')
    folder = osp.dirname(osp.abspath(args.dst))
    if not osp.isdir(folder):
        raise SystemExit(f'error: no folder {folder} for OUT; create it '
                         f'first.')
    if args.tol <= 0:
        raise SystemExit(f'error: --tol must be positive, got {args.tol:g}')
    # checkpoints written by tools/train.py carry mmengine's message hub
    from overlock_mm.runtime import mmengine_checkpoints
    try:
        with mmengine_checkpoints():
            ckpt = safe_load(args.src)
        out, report = reparameterize_checkpoint(
            ckpt, arch=parse_arch(args.arch), shape=tuple(args.shape),
            tol=args.tol)
    except (CheckpointError, ValueError, TypeError) as e:
        raise SystemExit(f'error: {e}') from None
    torch.save(out, args.dst)
    with mmengine_checkpoints():
        safe_load(args.dst)
    arch = report['arch'] if isinstance(report['arch'], str) else 'custom'
    print(f'{report["kind"]} checkpoint, OverLoCK arch {arch}, backbone '
          f'prefix {report["prefix"]!r}')
    print(f'outputs on a random {args.shape[0]}x{args.shape[1]} input: max '
          f'|difference| {report["max_diff"]:.3g} (max |output| '
          f'{report["max_abs"]:.3g}, allowed {args.tol:g} relative)')
    print(f'wrote {args.dst}: {report["tensors_after"]} tensors (was '
          f'{report["tensors_before"]})')


if __name__ == '__main__':
    main()
