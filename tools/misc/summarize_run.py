#!/usr/bin/env python
"""Print the one-screen summary at the end of ``scripts/main.sh``: task,
iterations, time, the evaluation's numbers, where the picture and the
checkpoint are.

    python tools/misc/summarize_run.py --task det --work-dir WORK_DIR \\
        --checkpoint CKPT --picture PNG --train-seconds S --total-seconds S

The numbers come from the JSON that mmengine writes for the last test run
(``WORK_DIR/test/<timestamp>/<timestamp>.json``), the drawn images' scores
from ``WORK_DIR/vis/quality.json`` (tools/analysis/draw_predictions.py).
"""
import argparse
import glob
import json
import os.path as osp

#: (key in the test JSON, label) per task
METRICS = {
    'det': (('coco/bbox_mAP', 'bbox mAP'),
            ('coco/bbox_mAP_50', 'bbox mAP@50'),
            ('coco/segm_mAP', 'segm mAP'),
            ('coco/segm_mAP_50', 'segm mAP@50')),
    'seg': (('mIoU', 'mIoU'), ('aAcc', 'aAcc'), ('mAcc', 'mAcc')),
}
TASKS = {'det': 'Mask R-CNN (boxes + instance masks)',
         'seg': 'UperNet (semantic segmentation)'}


def latest_test_metrics(work_dir: str) -> dict:
    """The metrics of the newest test run under ``work_dir/test``."""
    runs = sorted(glob.glob(osp.join(work_dir, 'test', '*', '*.json')))
    if not runs:
        raise FileNotFoundError(f'no test results under {work_dir}/test; run '
                                f'tools/test.py with --work-dir '
                                f'{work_dir}/test first')
    with open(runs[-1]) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[-1]


def summary(task, work_dir, checkpoint, picture, train_s, total_s) -> str:
    metrics = latest_test_metrics(work_dir)
    rows = [('task', TASKS[task])]
    iters = osp.splitext(osp.basename(checkpoint))[0]
    rows.append(('trained', f'{iters.replace("iter_", "")} iterations in '
                 f'{train_s} s ({total_s} s with evaluation and drawing)'))
    for key, label in METRICS[task]:
        if key in metrics:
            rows.append((label, f'{metrics[key]:.3f}' if task == 'det'
                         else f'{metrics[key]:.1f}'))
    quality = osp.join(work_dir, 'vis', 'quality.json')
    if osp.isfile(quality):
        with open(quality) as f:
            q = json.load(f)
        rows.append(('picture', f'{picture}: {q["typical"]}, the median '
                     f'image by {q["metric"]} ({q["typical_score"]:.2f}; '
                     f'mean {q["mean_score"]:.2f})'))
        rows.append(('all images', osp.join(work_dir, 'vis')))
    rows.append(('checkpoint', checkpoint))
    width = max(len(k) for k, _ in rows)
    return '\n'.join(['[main] summary'] +
                     [f'  {k:<{width}}  {v}' for k, v in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--task', choices=sorted(TASKS), required=True)
    p.add_argument('--work-dir', required=True)
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--picture', required=True)
    p.add_argument('--train-seconds', type=int, required=True)
    p.add_argument('--total-seconds', type=int, required=True)
    a = p.parse_args(argv)
    print(summary(a.task, a.work_dir, a.checkpoint, a.picture,
                  a.train_seconds, a.total_seconds))


if __name__ == '__main__':
    main()
