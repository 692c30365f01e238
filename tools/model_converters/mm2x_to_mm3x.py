#!/usr/bin/env python
"""Convert an official OverLoCK COCO (mmdet 2.28) or ADE20K (mmseg 0.30)
checkpoint to a plain mmdet 3.x / mmseg 1.x checkpoint.

What changed between the library versions, read from their code: for the
models used here (OverLoCK backbone, FPN, RPNHead, Shared2FCBBoxHead /
ConvFCBBoxHead, FCNMaskHead, UPerHead, FCNHead) the parameter names did *not*
change, so ``state_dict`` is kept as it is. What changed is the container:
2.x / 0.x keep the class names in ``meta['CLASSES']`` (3.x / 1.x in
``meta['dataset_meta']['classes']``) and carry the optimizer state and the
config text. This tool keeps the weights and the class names only, and checks
the result loads with ``weights_only=True``.

    python tools/model_converters/mm2x_to_mm3x.py IN.pth OUT.pth
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from overlock.checkpoint import CheckpointError, safe_load  # noqa: E402


def convert(ckpt: dict) -> dict:
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        raise ValueError("expected an mmdet/mmseg checkpoint with a "
                         "'state_dict' entry")
    sd = {k[len('module.'):] if k.startswith('module.') else k: v
          for k, v in ckpt['state_dict'].items()}
    meta = dict(ckpt.get('meta') or {})
    out_meta = {}
    classes = meta.get('CLASSES') or (meta.get('dataset_meta') or {}).get(
        'classes')
    if classes is not None:
        out_meta['dataset_meta'] = dict(classes=tuple(classes))
        if meta.get('PALETTE') is not None:
            out_meta['dataset_meta']['palette'] = [
                list(p) for p in meta['PALETTE']]
    for key in ('mmdet_version', 'mmseg_version', 'mmcv_version', 'epoch',
                'iter'):
        if key in meta:
            out_meta[f'source_{key}'] = meta[key]
    return dict(state_dict=sd, meta=out_meta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('src')
    p.add_argument('dst')
    args = p.parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        raise SystemExit('error: OUT must differ from IN (the original is '
                         'kept).')
    folder = osp.dirname(osp.abspath(args.dst))
    if not osp.isdir(folder):
        raise SystemExit(f'error: no folder {folder} for OUT; create it '
                         f'first.')
    try:
        out = convert(safe_load(args.src))
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f'error: {e}') from None
    if not any(k.startswith('backbone.') for k in out['state_dict']):
        raise SystemExit(f'error: {args.src} has no backbone.* tensors: not '
                         f'a detector or segmentor checkpoint (a backbone '
                         f'alone loads as it is, with no conversion).')
    torch.save(out, args.dst)
    safe_load(args.dst)
    print(f'wrote {args.dst}: {len(out["state_dict"])} tensors, meta '
          f'{sorted(out["meta"])}')


if __name__ == '__main__':
    main()
