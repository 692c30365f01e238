#!/usr/bin/env python
"""Write the compact copy of the official reference data that the tests use.

    python tools/misc/compact_reference.py ../shared/reference tests/data

The full files (``tiny_{detection,segmentation,classification}.pt``,
``state_dict_manifest.json``, produced by running the official code; see
their README) are ~43 MB.
The copy in ``tests/data`` keeps, per flavour, the cases listed in ``KEEP``
and stores them xz-compressed:

* weights, inputs and loss projections exactly (float32);
* reference *results* (outputs, gradients) of more than ``EXACT_NUMEL``
  elements as integers ``round(r / max|r| * 2**QUANT_BITS)``: each stored
  value is within ``max|r| * 2**-(QUANT_BITS + 1)`` of the official one, and
  the tests subtract that bound from their tolerance (see
  ``tests/reference_data.py``), so no assertion becomes looser.

The manifest becomes ``{form: {arch: [[key, shape], ...]}}`` in JSON, xz.
"""
import argparse
import io
import json
import lzma
import os

import torch

QUANT_BITS = 20
EXACT_NUMEL = 256
#: cases kept per flavour: eval case indices, and whether the train case is
KEEP = {
    'detection': dict(eval_cases=(0, 1, 3), train_case=True),
    'segmentation': dict(eval_cases=(0,), train_case=False),
    # the three eval inputs' logits, and main / aux logits and gradients
    'classification': dict(eval_cases=(0, 1, 2), train_case=True),
}
#: fields holding official results (quantised); everything else is exact
RESULT_FIELDS = ('outputs', 'logits', 'main', 'aux', 'grad_input',
                 'grad_params')


def quantize(t: torch.Tensor):
    if t.numel() <= EXACT_NUMEL or not t.is_floating_point():
        return t
    scale = t.abs().max().item()
    if scale == 0:
        return t
    q = torch.round(t.double() / scale * 2**QUANT_BITS).to(torch.int32)
    return {'quantized': q, 'scale': scale, 'bits': QUANT_BITS}


def _quantize_tree(obj):
    if isinstance(obj, torch.Tensor):
        return quantize(obj)
    if isinstance(obj, dict):
        return {k: _quantize_tree(v) for k, v in obj.items()}
    return [_quantize_tree(v) for v in obj]


def compact(data: dict, keep: dict) -> dict:
    out = dict(upstream_args=data['upstream_args'],
               state_dict=data['state_dict'])
    out['eval_cases'] = [
        {k: _quantize_tree(v) if k in RESULT_FIELDS else v
         for k, v in data['eval_cases'][i].items()}
        for i in keep['eval_cases']]
    if keep['train_case']:
        out['train_case'] = {
            k: _quantize_tree(v) if k in RESULT_FIELDS else v
            for k, v in data['train_case'].items()}
    return out


def _write_xz(path: str, payload: bytes) -> None:
    with open(path, 'wb') as f:
        f.write(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    print(f'{path}: {os.path.getsize(path) / 1e6:.2f} MB')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='folder with the full reference files')
    parser.add_argument('dst', help='output folder (tests/data)')
    args = parser.parse_args()
    os.makedirs(args.dst, exist_ok=True)
    for flavour, keep in KEEP.items():
        data = torch.load(os.path.join(args.src, f'tiny_{flavour}.pt'),
                          weights_only=True)
        buf = io.BytesIO()
        torch.save(compact(data, keep), buf)
        _write_xz(os.path.join(args.dst, f'tiny_{flavour}.pt.xz'),
                  buf.getvalue())
    with open(os.path.join(args.src, 'state_dict_manifest.json')) as f:
        manifest = json.load(f)
    _write_xz(os.path.join(args.dst, 'state_dict_manifest.json.xz'),
              json.dumps(manifest, separators=(',', ':')).encode())


if __name__ == '__main__':
    main()
