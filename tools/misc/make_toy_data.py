#!/usr/bin/env python
"""Write the embedded toy datasets (deterministic, seeded).

* ``OUT/coco``: instance segmentation in COCO format: ``train/``, ``val/``
  PNG images and ``annotations/instances_{train,val}.json`` with exact masks
  (RLE of the drawn pixels, occlusions cut out), boxes and areas.
* ``OUT/ade``: semantic segmentation in ADE20K's layout:
  ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (0 = background, 1..3 = the
  classes).
* ``OUT/cls`` (``--cls``): classification in ImageNet's folder layout,
  ``train/<class>/*.png`` and ``val/<class>/*.png``: square crops around the
  shapes of toy images (:func:`write_cls`).

Classes: circle, square, triangle, drawn in random colours on a textured
background, 2-4 per image, possibly overlapping (later shapes occlude earlier
ones; masks are cut accordingly).

    python tools/misc/make_toy_data.py --out data/toy
    python tools/misc/make_toy_data.py --out data/toy --cls   # only OUT/cls
"""
import argparse
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle')


def _polygon(kind, cx, cy, r, angle):
    if kind == 'circle':
        n = 32
        return [(cx + r * math.cos(2 * math.pi * i / n),
                 cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)]
    n = 4 if kind == 'square' else 3
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n),
             cy + r * math.sin(angle + 2 * math.pi * i / n)) for i in range(n)]


def _mask_of(poly, size):
    m = Image.new('L', size, 0)
    ImageDraw.Draw(m).polygon(poly, fill=1)
    return np.asarray(m, dtype=bool)


def _mask_to_rle(mask):
    """COCO RLE of a binary mask (exact, also for occluded shapes)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def make_image(rng, size):
    h, w = size
    # a grey-ish background of similar statistics in every image (strong
    # per-image colour casts make small-batch BatchNorm statistics useless)
    base = int(rng.integers(110, 150)) + rng.integers(-10, 11, size=3)
    noise = rng.normal(0, 12, size=(h, w, 3))
    img = np.clip(base[None, None] + noise, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    shapes = []
    occupied = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 5))):
        kind = CLASSES[int(rng.integers(0, 3))]
        r = float(rng.uniform(0.12, 0.28) * min(h, w))
        cx = float(rng.uniform(r, w - r))
        cy = float(rng.uniform(r, h - r))
        poly = _polygon(kind, cx, cy, r, float(rng.uniform(0, math.pi)))
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if np.abs(np.array(color) - base).sum() < 120:
            color = tuple(int(255 - c) for c in color)
        mask = _mask_of(poly, (w, h))
        if (mask & occupied).sum() > 0.5 * mask.sum():
            continue  # would be mostly hidden: skip it
        draw.polygon(poly, fill=color)
        for s in shapes:  # occlusion
            s['mask'] &= ~mask
        occupied |= mask
        shapes.append(dict(kind=kind, poly=poly, mask=mask))
    return canvas, [s for s in shapes if s['mask'].sum() > 20]


def write(out, n_train=300, n_val=50, size=(128, 128), seed=0):
    rng = np.random.default_rng(seed)
    coco = os.path.join(out, 'coco')
    ade = os.path.join(out, 'ade')
    ann_id = 1
    for split, n, ade_split in (('train', n_train, 'training'),
                                ('val', n_val, 'validation')):
        for d in (os.path.join(coco, split), os.path.join(coco, 'annotations'),
                  os.path.join(ade, 'images', ade_split),
                  os.path.join(ade, 'annotations', ade_split)):
            os.makedirs(d, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, shapes = make_image(rng, size)
            name = f'{split}_{i:05d}'
            img.save(os.path.join(coco, split, name + '.png'))
            img.save(os.path.join(ade, 'images', ade_split, name + '.jpg'),
                     quality=95)
            label = np.zeros(size, np.uint8)
            images.append(dict(id=i + 1, file_name=name + '.png',
                               height=size[0], width=size[1]))
            for s in shapes:
                label[s['mask']] = CLASSES.index(s['kind']) + 1
                ys, xs = np.nonzero(s['mask'])
                x0, y0 = float(xs.min()), float(ys.min())
                bw, bh = float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)
                annotations.append(dict(
                    id=ann_id, image_id=i + 1,
                    category_id=CLASSES.index(s['kind']) + 1,
                    segmentation=_mask_to_rle(s['mask']),
                    area=float(s['mask'].sum()), bbox=[x0, y0, bw, bh],
                    iscrowd=0))
                ann_id += 1
            Image.fromarray(label).save(
                os.path.join(ade, 'annotations', ade_split, name + '.png'))
        with open(os.path.join(coco, 'annotations',
                               f'instances_{split}.json'), 'w') as f:
            json.dump(dict(
                images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=c, supercategory='shape')
                            for i, c in enumerate(CLASSES)]), f)
    return out


def write_cls(out, n_train=300, n_val=50, size=(128, 128), crop=64, seed=0,
              min_visible=0.6):
    """Write the toy classification set ``OUT/cls`` in ImageNet's layout.

    Every shape of a toy image (:func:`make_image`) that is at least
    ``min_visible`` visible becomes one sample: the square around it
    (its circumscribed circle plus 15 %; black outside the image), resized to
    ``crop`` x ``crop``, labelled with its kind. Deterministic for a seed.

    Args:
        out (str): Output root; files go to ``OUT/cls/{train,val}/<class>/``.
        n_train (int): Toy images cut for the train split. Defaults to 300.
        n_val (int): Toy images cut for the val split. Defaults to 50.
        size (tuple[int, int]): Size (H, W) of the toy images.
            Defaults to (128, 128).
        crop (int): Side of the saved crops. Defaults to 64.
        seed (int): Random seed; with the seed, counts and size of
            :func:`write` the crops come from the detection set's own train /
            val images (no val image among the train crops). Defaults to 0.
        min_visible (float): Smallest visible share of a shape for it to be
            kept (occluded shapes are ambiguous). Defaults to 0.6.

    Returns:
        dict: ``{split: {class: number of crops}}``.
    """
    if crop < 8:
        raise ValueError(f'crop must be at least 8 pixels, got {crop}')
    if not 0 < min_visible <= 1:
        raise ValueError(f'min_visible must be in (0, 1], got {min_visible}')
    rng = np.random.default_rng(seed)
    root = os.path.join(out, 'cls')
    counts = {}
    for split, n in (('train', n_train), ('val', n_val)):
        counts[split] = dict.fromkeys(CLASSES, 0)
        for c in CLASSES:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in range(n):
            img, shapes = make_image(rng, size)
            h, w = size
            for j, s in enumerate(shapes):
                full = _mask_of(s['poly'], (w, h)).sum()
                if s['mask'].sum() < min_visible * full:
                    continue
                xs, ys = zip(*s['poly'])
                cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
                r = 1.15 * max(math.hypot(x - cx, y - cy)
                               for x, y in s['poly'])
                box = (int(cx - r), int(cy - r), int(math.ceil(cx + r)),
                       int(math.ceil(cy + r)))
                sample = img.crop(box).resize((crop, crop), Image.BILINEAR)
                sample.save(os.path.join(root, split, s['kind'],
                                         f'{split}_{i:05d}_{j}.png'))
                counts[split][s['kind']] += 1
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/toy')
    p.add_argument('--train', type=int, default=300)
    p.add_argument('--val', type=int, default=50)
    p.add_argument('--size', type=int, nargs=2, default=(128, 128))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cls', action='store_true',
                   help='write only the classification crops (OUT/cls)')
    p.add_argument('--crop', type=int, default=64,
                   help='side of the classification crops (with --cls)')
    args = p.parse_args(argv)
    if args.cls:
        write_cls(args.out, args.train, args.val, tuple(args.size),
                  args.crop, args.seed)
        return
    write(args.out, args.train, args.val, tuple(args.size), args.seed)


if __name__ == '__main__':
    main()
