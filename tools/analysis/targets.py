#!/usr/bin/env python
"""Read the JSON files of ``benchmark.py`` and ``benchmark_detector.py`` and
say, target by target, how far the measurements are from the GPU speed
targets (issue 9): ratios to the peer measured in the same run, the limit,
and whether it is met.

    python tools/analysis/targets.py results/*.json
    python tools/analysis/targets.py results/*.json --markdown summary.md

A target is only called met on a GPU measurement of its own setting (input
size, batch, dtype); CPU runs and other settings are listed with what they
reached, marked as such. Every pair comes from one file, i.e. one run: the
ratios are never taken between processes or machines.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional

#: issue 9's targets: the backbone against ConvNeXt-T (timm
#: ``features_only``), the detector against mmdet's Swin-T Mask R-CNN
BACKBONE_TARGETS = [
    dict(name='backbone train step, AMP fp16', mode='train', dtype='fp16',
         batch=2, size=[800, 1216], metric='median_ms', limit=2.0, aim=1.5),
    dict(name='peak training memory, AMP fp16', mode='train',
         dtype='fp16', batch=2, size=[800, 1216], metric='peak_mem_mb',
         limit=1.5, aim=None),
    dict(name='backbone eval, fp32', mode='eval', dtype='fp32', batch=1,
         size=[800, 1216], metric='median_ms', limit=2.0, aim=None),
    dict(name='backbone eval, autocast fp16', mode='eval', dtype='fp16',
         batch=1, size=[800, 1216], metric='median_ms', limit=2.0, aim=None),
]
DETECTOR_TARGET = dict(name='Mask R-CNN iteration vs Swin-T', mode='train',
                       batch=2, size=[1333, 800], limit=1.3, aim=1.0)
OURS, PEER = 'ours', 'convnext_t'


def _status(ratio: float, target: dict, on_gpu: bool, same: bool) -> str:
    if not on_gpu:
        return 'CPU run: not a target measurement'
    if not same:
        return 'other setting: not the target\'s'
    met = 'met' if ratio <= target['limit'] else 'not met'
    if met == 'met' and target.get('aim') and ratio > target['aim']:
        met += ' (aim not reached)'
    return met


def _compiled(res: dict) -> str:
    return res.get('compiled') or 'eager'


def _backbone_row(target: dict, ours: dict, peer: dict, source: str) -> dict:
    ratio = ours[target['metric']] / peer[target['metric']]
    same = ours['batch'] == target['batch'] and ours['dtype'] == \
        target['dtype'] and list(ours['size']) == target['size']
    return dict(
        target=target['name'], source=source,
        setting=f"{ours['mode']} {ours['dtype']}, batch {ours['batch']}, "
                f"{ours['size'][0]}x{ours['size'][1]}, {_compiled(ours)}",
        device=ours['device_name'], ours=ours[target['metric']],
        peer=peer[target['metric']], unit=target['metric'], ratio=ratio,
        limit=target['limit'], aim=target['aim'],
        status=_status(ratio, target, ours['device_name'] != 'CPU', same))


def backbone_rows(results: List[dict], source: str) -> List[dict]:
    """Target rows of one ``benchmark.py --json`` file: for every target
    metric and every (mode, dtype) the file has, ``ours`` against
    ConvNeXt-T; plus, per mode, whether autocast eval is slower than
    fp32."""
    rows = []
    by_key: Dict[tuple, Dict[str, dict]] = {}
    for r in results:
        if 'error' in r:
            rows.append(_failure(f"{r['impl']} {r['mode']} {r['dtype']}",
                                 r['error'], source))
            continue
        impl = r['impl'].partition('@')[0]
        key = (r['mode'], r['dtype'])
        by_key.setdefault(key, {}).setdefault(impl, r)
    for target in BACKBONE_TARGETS:
        # the AMP targets' rows also for bf16 runs (marked as another
        # setting): what bf16 reaches is worth seeing next to them
        for dtype in dict.fromkeys([target['dtype']] + (
                ['bf16'] if target['dtype'] == 'fp16' else [])):
            pair = by_key.get((target['mode'], dtype), {})
            if OURS in pair and PEER in pair and \
                    pair[PEER][target['metric']] > 0:
                rows.append(_backbone_row(target, pair[OURS], pair[PEER],
                                          source))
    # AMP: eval under autocast not slower than fp32
    for half in ('fp16', 'bf16'):
        fp32 = by_key.get(('eval', 'fp32'), {}).get(OURS)
        low = by_key.get(('eval', half), {}).get(OURS)
        if fp32 is None or low is None:
            continue
        ratio = low['median_ms'] / fp32['median_ms']
        target = dict(limit=1.0, aim=None)
        rows.append(dict(
            target=f'eval under autocast {half} not slower than fp32',
            source=source,
            setting=f"eval, batch {low['batch']}, "
                    f"{low['size'][0]}x{low['size'][1]}, {_compiled(low)}",
            device=low['device_name'], ours=low['median_ms'],
            peer=fp32['median_ms'], unit='median_ms (ours fp32)',
            ratio=ratio, limit=1.0, aim=None,
            status=_status(ratio, target, low['device_name'] != 'CPU',
                           True)))
    return rows


def _failure(what: str, error: str, source: str) -> dict:
    return dict(target=f'FAILED: {what}', source=source, setting='',
                device='', ours=float('nan'), peer=float('nan'), unit='',
                ratio=float('nan'), limit=float('nan'), aim=None,
                status=(error.splitlines()[0][:200] if error else 'failed').replace('|', '/'))


def _find(results: List[dict], word: str) -> Optional[dict]:
    hits = [r for r in results if word in osp.basename(r['config']).lower()]
    return hits[0] if hits else None


def detector_rows(data: dict, source: str) -> List[dict]:
    """The detector target from one ``benchmark_detector.py --json`` file:
    the OverLoCK config's seconds per iteration against the Swin-T one's."""
    target = DETECTOR_TARGET
    ours = _find(data['results'], 'overlock')
    peer = _find(data['results'], 'swin')
    rows = [_failure(osp.basename(f['config']), f['error'], source)
            for f in data.get('failed', [])]
    for mode in ('train', 'eval'):
        if ours is None or peer is None or mode not in ours or \
                mode not in peer:
            continue
        ratio = ours[mode]['median_s'] / peer[mode]['median_s']
        same = mode == target['mode'] and data['batch'] == target['batch'] \
            and list(data['size']) == target['size']
        rows.append(dict(
            target=target['name'] if mode == 'train'
            else 'Mask R-CNN eval iteration vs Swin-T (no target)',
            source=source,
            setting=f"{mode} {data['amp']}, batch {data['batch']}, "
                    f"{data['size'][0]}x{data['size'][1]}, "
                    f"{data.get('compile_backbone') or 'eager'}",
            device=data['device'], ours=ours[mode]['median_s'] * 1e3,
            peer=peer[mode]['median_s'] * 1e3, unit='ms/iter',
            ratio=ratio, limit=target['limit'], aim=target['aim'],
            status=_status(ratio, target, data['device'] != 'CPU', same)
            if mode == 'train' else 'no target'))
    return rows


def collect(paths: List[str]) -> List[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise SystemExit(f'{path}: not a JSON file ({e}); pass the '
                                 f'--json output of benchmark.py or '
                                 f'benchmark_detector.py')
        name = osp.basename(path)
        if isinstance(data, list):
            rows += backbone_rows(data, name)
        elif isinstance(data, dict) and 'results' in data:
            rows += detector_rows(data, name)
        else:
            raise SystemExit(f'{path}: neither a benchmark.py nor a '
                             f'benchmark_detector.py --json file')
    return rows


def table(rows: List[dict]) -> str:
    lines = ['| target | setting | device | ours | reference | ratio | '
             'limit (aim) | status | file |',
             '|---|---|---|---:|---:|---:|---:|---|---|']
    for r in rows:
        if r['target'].startswith('FAILED'):
            lines.append(f"| {r['target']} | | | | | | | {r['status']} | "
                         f"{r['source']} |")
            continue
        limit = f"{r['limit']:g}x" + (f" ({r['aim']:g}x)" if r['aim'] else '')
        unit = 'MB' if r['unit'] == 'peak_mem_mb' else 'ms'
        lines.append(
            f"| {r['target']} | {r['setting']} | {r['device']} | "
            f"{r['ours']:.1f} {unit} | {r['peer']:.1f} {unit} | "
            f"{r['ratio']:.2f}x | {limit} | {r['status']} | {r['source']} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('json', nargs='+', help='--json files of benchmark.py / '
                   'benchmark_detector.py')
    p.add_argument('--markdown', help='also write the table here')
    args = p.parse_args(argv)
    missing = [j for j in args.json if not osp.isfile(j)]
    if missing:
        raise SystemExit(f'no such file: {", ".join(missing)}')
    rows = collect(args.json)
    text = table(rows) if rows else \
        'no target pairs in these files: run benchmark.py with --peers ' \
        '(ours and convnext_t) or benchmark_detector.py with its default ' \
        'configs'
    sys.stdout.write(text + '\n')
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(text + '\n')
    return rows


if __name__ == '__main__':
    main()
