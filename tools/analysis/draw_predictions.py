#!/usr/bin/env python
"""Draw ground truth and predictions side by side for *every* image of a
config's test set, score each image, and pick a typical one.

    python tools/analysis/draw_predictions.py CONFIG CHECKPOINT \\
        --out-dir work_dirs/toy_mask_rcnn/vis [--score-thr 0.5] \\
        [--typical outputs/toy_det_prediction.png]

Runs in one process (whatever the number of processes the model was trained
or tested with), so no image is left out; mmdet's / mmseg's own visualizers
draw (boxes, masks, class names, scores >= ``--score-thr``; the segmentation
palette), on the image enlarged ``--scale`` times so that small images stay
readable.

How an image is scored (``quality.json`` lists every image):

* detection: F1 of the predictions scoring >= ``--score-thr`` against the
  ground truth, a prediction being correct when its class is right and its
  box overlaps an unmatched ground-truth box with IoU >= 0.5 (greedy, by
  score);
* segmentation: the mean IoU over the classes present in the ground truth or
  the prediction.

The typical image is the one of median score (ties broken by file name), so
it is neither the best nor the worst: copied to ``--typical`` when given.
"""
import argparse
import json
import logging
import os
import os.path as osp
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.runner import load_checkpoint

from overlock_mm.runtime import build_model, mmengine_checkpoints

logger = logging.getLogger('draw_predictions')


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` (N, 4) and ``b`` (M, 4), ``x1 y1 x2 y2``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.)


def detection_f1(gt_boxes, gt_labels, boxes, labels, scores,
                 score_thr: float = 0.5, iou_thr: float = 0.5) -> float:
    """F1 of the detections scoring >= ``score_thr`` (greedy matching by
    score, same class, IoU >= ``iou_thr``). 1.0 when both are empty."""
    keep = np.asarray(scores) >= score_thr
    boxes = np.asarray(boxes).reshape(-1, 4)[keep]
    labels = np.asarray(labels)[keep]
    order = np.argsort(-np.asarray(scores)[keep], kind='stable')
    gt_labels = np.asarray(gt_labels)
    n_gt, n_pred = len(gt_labels), len(labels)
    if n_gt + n_pred == 0:
        return 1.0
    ious = box_iou(boxes, gt_boxes)
    used = np.zeros(n_gt, bool)
    tp = 0
    for i in order:
        cand = np.where(~used & (gt_labels == labels[i]))[0]
        if len(cand) == 0:
            continue
        j = cand[np.argmax(ious[i, cand])]
        if ious[i, j] >= iou_thr:
            used[j] = True
            tp += 1
    return 2.0 * tp / (n_gt + n_pred)


def segmentation_miou(gt: np.ndarray, pred: np.ndarray,
                      ignore_index: int = 255) -> float:
    """Mean IoU over the classes present in ``gt`` or ``pred``."""
    valid = gt != ignore_index
    gt, pred = gt[valid], pred[valid]
    ious = []
    for c in np.union1d(np.unique(gt), np.unique(pred)):
        inter = np.logical_and(gt == c, pred == c).sum()
        union = np.logical_or(gt == c, pred == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious)) if ious else 1.0


def typical_index(names, scores) -> int:
    """Index of the median-scoring image (the lower median for an even
    count), ties broken by name."""
    if not len(scores):
        raise ValueError('no images to choose from')
    order = sorted(range(len(scores)), key=lambda i: (scores[i], names[i]))
    return order[(len(order) - 1) // 2]


def _enlarge(sample, scale: int):
    """Scale the boxes, masks and maps of a data sample by ``scale``
    (nearest neighbour for masks and maps), in place."""
    for key in ('gt_instances', 'pred_instances'):
        if key not in sample:
            continue
        inst = sample.get(key)
        if 'bboxes' in inst:
            inst.bboxes = inst.bboxes * scale
        if 'masks' in inst:
            masks = inst.masks
            if hasattr(masks, 'to_ndarray'):  # BitmapMasks / PolygonMasks
                masks = masks.to_ndarray()
            masks = torch.as_tensor(np.asarray(masks)).float()[None]
            if masks.shape[1]:
                masks = F.interpolate(masks, scale_factor=scale,
                                      mode='nearest')
            inst.masks = masks[0].bool()
    for key in ('gt_sem_seg', 'pred_sem_seg'):
        if key in sample:
            from mmengine.structures import PixelData
            data = sample.get(key).data
            sample.set_field(PixelData(data=F.interpolate(
                data[None].float(), scale_factor=scale,
                mode='nearest')[0].to(data.dtype)), key)
    return sample


def _score(scope, sample, score_thr):
    if scope == 'mmdet':
        gt, pred = sample.gt_instances, sample.pred_instances
        return detection_f1(gt.bboxes.cpu().numpy(), gt.labels.cpu().numpy(),
                            pred.bboxes.cpu().numpy(),
                            pred.labels.cpu().numpy(),
                            pred.scores.cpu().numpy(), score_thr)
    return segmentation_miou(sample.gt_sem_seg.data[0].cpu().numpy(),
                             sample.pred_sem_seg.data[0].cpu().numpy())


def draw(config, checkpoint, out_dir, score_thr=0.5, scale=3,
         typical=None, cfg_options=None) -> dict:
    """Draw every test image; returns ``{'scores': {name: score},
    'typical': name, 'typical_score': s, 'mean_score': m}`` (also written
    to ``out_dir/quality.json``)."""
    import mmcv
    from mmengine.registry import DATASETS, VISUALIZERS
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = build_model(cfg)  # sets the config's default scope
    scope = cfg.get('default_scope', 'mmdet')
    with mmengine_checkpoints():
        load_checkpoint(model, checkpoint, map_location='cpu',
                        logger='silent')
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    # segmentation maps half transparent, so that the image shows through
    extra = dict(alpha=0.5) if scope == 'mmseg' else {}
    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name='draw_predictions', vis_backends=None,
             save_dir=None, **extra))
    visualizer.dataset_meta = dataset.metainfo
    os.makedirs(out_dir, exist_ok=True)
    names, scores, files = [], [], []
    for i in range(len(dataset)):
        item = dataset[i]
        with torch.no_grad():
            sample = model.test_step(
                dict(inputs=[item['inputs']],
                     data_samples=[item['data_samples']]))[0]
        name = osp.basename(sample.img_path)
        scores.append(_score(scope, sample, score_thr))
        names.append(name)
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        if scale != 1:
            image = mmcv.imrescale(image, scale, interpolation='nearest')
            sample = _enlarge(sample, scale)
        out_file = osp.join(out_dir, osp.splitext(name)[0] + '.png')
        kwargs = dict(pred_score_thr=score_thr) if scope == 'mmdet' else {}
        visualizer.add_datasample(name, image, sample, draw_gt=True,
                                  draw_pred=True, out_file=out_file, **kwargs)
        files.append(out_file)
    k = typical_index(names, scores)
    result = dict(
        metric='F1 at IoU 0.5, score >= %g' % score_thr
        if scope == 'mmdet' else 'per-image mIoU',
        scores=dict(zip(names, scores)), typical=names[k],
        typical_score=scores[k], mean_score=float(np.mean(scores)),
        typical_file=files[k])
    with open(osp.join(out_dir, 'quality.json'), 'w') as f:
        json.dump(result, f, indent=1)
    if typical:
        os.makedirs(osp.dirname(osp.abspath(typical)), exist_ok=True)
        shutil.copyfile(files[k], typical)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out-dir', required=True,
                   help='one drawing per test image goes here')
    p.add_argument('--score-thr', type=float, default=0.5,
                   help='draw (and score) detections above this score')
    p.add_argument('--scale', type=int, default=3,
                   help='enlarge the images this many times for drawing')
    p.add_argument('--typical', help='copy the typical image here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint}')
    r = draw(args.config, args.checkpoint, args.out_dir, args.score_thr,
             args.scale, args.typical, args.cfg_options)
    print(f'drew {len(r["scores"])} images in {args.out_dir}; '
          f'{r["metric"]}: mean {r["mean_score"]:.3f}; typical image (the '
          f'median) {r["typical"]} scores {r["typical_score"]:.3f}'
          + (f' -> {args.typical}' if args.typical else ''))


if __name__ == '__main__':
    main()
