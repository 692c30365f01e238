#!/usr/bin/env python
"""Train a small OverLoCK classifier on generated shape images (CPU, minutes):
the model the Grad-CAM example of the README was made with.

    python tools/misc/train_toy_classifier.py --out work_dirs/toy_cls --steps 160

Each image shows one circle, square or triangle (the class) of random size,
colour, rotation and position on a noisy grey background. Writes
``OUT/toy_classifier.pth`` (``state_dict`` and the class names in
``meta.dataset_meta``; it loads like any OverLoCK classification checkpoint)
and a few held-out images ``OUT/samples/*.png``, and prints the held-out
accuracy.
"""
import argparse
import math
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

CLASSES = ('circle', 'square', 'triangle')
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: A small arch (0.2 M backbone parameters) for CPU training.
TOY_ARCH = dict(
    depths=[1, 1, 1, 1],
    sub_depths=[2, 1],
    embed_dims=[16, 24, 32, 48],
    kernel_sizes=[7, 7, 7, 5],
    mlp_ratios=[2, 2, 2, 2],
    sub_num_heads=[2, 3],
    sub_mlp_ratios=[2, 2])


def make_shape_image(rng: np.random.Generator, size: int,
                     label: int) -> Image.Image:
    """One shape of class ``label`` on a noisy grey background."""
    base = int(rng.integers(110, 150))
    noise = rng.normal(0, 12, size=(size, size, 3))
    canvas = Image.fromarray(
        np.clip(base + noise, 0, 255).astype(np.uint8))
    r = float(rng.uniform(0.12, 0.22) * size)
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = float(rng.uniform(0, 2 * math.pi))
    n = (48, 4, 3)[label]
    poly = [(cx + r * math.cos(angle + 2 * math.pi * i / n),
             cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i in range(n)]
    colour = rng.integers(0, 256, size=3)
    if np.abs(colour - base).sum() < 150:
        colour = 255 - colour
    ImageDraw.Draw(canvas).polygon(poly, fill=tuple(int(c) for c in colour))
    return canvas


def to_tensor(img: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` ImageNet-normalised tensor of an RGB image."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.)
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    return x.permute(2, 0, 1).contiguous()


def make_dataset(n: int, size: int, seed: int):
    """``(images, labels, pil_images)`` with balanced classes."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    pils = [make_shape_image(rng, size, lab) for lab in labels]
    return (torch.stack([to_tensor(p) for p in pils]),
            torch.tensor(labels), pils)


def build_model():
    """The toy classifier (no auxiliary head)."""
    from overlock import OverLoCK
    return OverLoCK(TOY_ARCH, num_classes=len(CLASSES), projection=128,
                    use_ds=False)


def train(model, images, labels, steps: int, batch: int = 16,
          lr: float = 2e-3, seed: int = 0, log_every: int = 0):
    """AdamW with cosine decay on random batches; returns the model in eval
    mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch, ), generator=g)
        x = images[idx]
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f'step {step + 1}/{steps}: loss {loss.item():.3f}',
                  flush=True)
    return model.eval()


def accuracy(model, images, labels) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x in images.split(32)])
    return (pred == labels).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='work_dirs/toy_cls')
    p.add_argument('--steps', type=int, default=160)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--train-images', type=int, default=480)
    p.add_argument('--val-images', type=int, default=90)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.time()
    x, y, _ = make_dataset(args.train_images, args.size, args.seed)
    vx, vy, vpil = make_dataset(args.val_images, args.size, args.seed + 1)
    model = train(build_model(), x, y, args.steps, batch=args.batch,
                  seed=args.seed, log_every=20)
    acc = accuracy(model, vx, vy)
    os.makedirs(osp.join(args.out, 'samples'), exist_ok=True)
    ckpt = osp.join(args.out, 'toy_classifier.pth')
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=CLASSES))), ckpt)
    for i in range(6):
        vpil[i].save(osp.join(args.out, 'samples',
                              f'{i}_{CLASSES[int(vy[i])]}.png'))
    print(f'held-out accuracy {acc * 100:.1f}% ({args.val_images} images, '
          f'{args.steps} steps, {time.time() - t0:.0f} s); wrote {ckpt}')


if __name__ == '__main__':
    main()
