#!/usr/bin/env python
"""Effective receptive fields (ERF) of the last layers of stages 3 and 4
(the OverLoCK paper's Figure 2), for OverLoCK and any timm backbone.

    python tools/analysis/erf.py IMAGE_DIR --models overlock_t convnext_tiny swin_tiny_patch4_window7_224 \\
        --num-images 300 --size 1024 --out-dir work_dirs/erf
    python tools/analysis/erf.py IMAGE_DIR --models overlock=overlock_t_in1k_224.pth   # from a checkpoint

Method (Luo et al., NeurIPS 2016, as RepLKNet measured it): for each image
(resized to ``--size`` squared, ImageNet-normalised), the gradient of the
central output position of the stage (its ReLU summed over the channels, as
RepLKNet: the plain channel sum of a LayerNorm output is zero) with respect
to the input; its absolute value, summed over the colour channels, is
averaged over the images. The heat maps show that average on a logarithmic
scale (``--decades`` decades below its maximum); brighter green = larger
contribution.

The printed *high-contribution area ratio* at threshold ``t`` is the area of
the smallest square centred on the image centre that holds ``t`` of the total
contribution, divided by the image area (RepLKNet's measure, computed on the
contribution itself; RepLKNet's own script takes ``log10(1 + x)`` of it first,
which gives larger ratios). Larger means a wider field.

A model is ``NAME`` or ``NAME=CHECKPOINT``: ``overlock_{xt,t,s,b}`` (random
init, or the weights of any OverLoCK classification / detection /
segmentation checkpoint, arch read from it), or a timm model name built with
``features_only=True`` (random init unless a checkpoint is given: no weights
are downloaded), its last two feature levels being stages 3 and 4.
Writes ``<out>/<model>_stage{3,4}.png``, a grid ``<out>/erf.png`` of all,
the raw maps ``<out>/erf.npz`` and the ratios ``<out>/erf_ratios.json``.
"""
import argparse
import json
import os
import os.path as osp
import re
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def area_ratio(score: np.ndarray, t: float) -> float:
    """Area share of the smallest centred square holding ``t`` of ``score``.

    The squares have odd sides ``2r + 1`` around pixel ``(H // 2, W // 2)``,
    clipped to the map, so the whole map (ratio 1) is the largest.

    Args:
        score: A non-negative ``(H, W)`` contribution map.
        t: The share of the total, in ``(0, 1]``.
    """
    if not 0 < t <= 1:
        raise ValueError(f'threshold must be in (0, 1], got {t}')
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2 or (score < 0).any():
        raise ValueError('score must be a non-negative 2-D map')
    h, w = score.shape
    total = score.sum()
    if total <= 0:
        raise ValueError('score is zero everywhere: no receptive field')
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = score.cumsum(0).cumsum(1)
    cy, cx = h // 2, w // 2
    for r in range(max(h, w)):
        y0, y1 = max(cy - r, 0), min(cy + r + 1, h)
        x0, x1 = max(cx - r, 0), min(cx + r + 1, w)
        inside = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0]
                  + integral[y0, x0])
        if inside >= t * total * (1 - 1e-12):
            return (y1 - y0) * (x1 - x0) / (h * w)
    return 1.0


def list_images(folder: str, num: int):
    """The first ``num`` images (sorted paths) under ``folder``."""
    if not osp.isdir(folder):
        raise SystemExit(f'error: image folder not found: {folder}')
    paths = sorted(
        osp.join(root, f) for root, _, files in os.walk(folder)
        for f in files if f.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise SystemExit(f'error: no {"/".join(IMAGE_EXTS)} image under '
                         f'{folder}')
    return paths[:num]


def load_image(path: str, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` ImageNet-normalised tensor of an image file."""
    from PIL import Image
    img = Image.open(path).convert('RGB').resize((size, size),
                                                 Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.)
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    return x.permute(2, 0, 1)[None].contiguous()


def build_overlock(name: str, checkpoint=None):
    """An OverLoCK from a checkpoint (arch read from it) or random init;
    returns a function ``x -> (stage3, stage4)``."""
    from overlock import OverLoCK
    from overlock.checkpoint import safe_load
    from overlock.convert import (build_from_state_dict, find_backbone,
                                  weights_of)
    if checkpoint:
        # checkpoints written by tools/train.py carry mmengine's message hub
        from overlock_mm.runtime import mmengine_checkpoints
        with mmengine_checkpoints():
            raw = safe_load(checkpoint)
        _, sd = find_backbone(weights_of(raw)[1])
        _, model = build_from_state_dict(sd)
    else:
        model = OverLoCK(name, fuse_overview=False).eval()

    def stages(x):
        feats, _ = model.forward_features(x, (2, 3))
        return feats[2], feats[3]

    return model, stages


def build_timm(name: str, checkpoint=None, size: int = 224):
    """A timm backbone (``features_only``); returns the model and a function
    ``x -> (stage3, stage4)`` (its last two feature levels, NCHW)."""
    import timm
    kwargs = dict(pretrained=bool(checkpoint), features_only=True)
    if checkpoint:
        kwargs['pretrained_cfg_overlay'] = dict(file=checkpoint)
    try:
        model = timm.create_model(name, img_size=size, **kwargs)
    except TypeError:  # models without a fixed input size
        model = timm.create_model(name, **kwargs)
    except RuntimeError as e:
        raise SystemExit(f'error: timm could not build {name!r}: {e}') \
            from None
    channels = model.feature_info.channels()[-2:]
    model.eval()

    def stages(x):
        outs = list(model(x))[-2:]
        return tuple(
            o if o.shape[1] == c else o.permute(0, 3, 1, 2)  # NHWC (Swin)
            for o, c in zip(outs, channels))

    return model, stages


def build(spec: str, size: int):
    """``(tag, model, stages)`` of a ``NAME[=CHECKPOINT]`` spec."""
    name, _, ckpt = spec.partition('=')
    if name.lower().startswith('overlock'):
        model, stages = build_overlock(name or 't', ckpt or None)
    else:
        try:
            import timm
        except ImportError:
            raise SystemExit('error: timm models need timm (pip install '
                             'timm)') from None
        if name not in timm.list_models():
            raise SystemExit(f'error: unknown model {name!r}: use '
                             f'overlock_{{xt,t,s,b}} or a timm model name '
                             f'(timm.list_models()).')
        model, stages = build_timm(name, ckpt or None, size)
    for p in model.parameters():
        p.requires_grad_(False)
    tag = re.sub(r'[^A-Za-z0-9_.-]', '_', name)
    if ckpt:
        tag += '_' + re.sub(r'[^A-Za-z0-9_.-]', '_',
                            osp.splitext(osp.basename(ckpt))[0])
    return tag, model, stages


def erf_maps(stages, images, size: int, device='cpu'):
    """Average ``|d relu(centre) / d input|`` (summed over output and colour
    channels) of the stage-3 and stage-4 outputs over ``images``: two
    ``(size, size)`` arrays."""
    acc = [torch.zeros(size, size, dtype=torch.float64) for _ in range(2)]
    for path in images:
        x = load_image(path, size).to(device).requires_grad_(True)
        outs = stages(x)
        for i, out in enumerate(outs):
            h, w = out.shape[-2:]
            # ReLU first: the channel sum of a LayerNorm output is zero
            centre = torch.relu(out[:, :, h // 2, w // 2]).sum()
            grad, = torch.autograd.grad(centre, x,
                                        retain_graph=i < len(outs) - 1)
            acc[i] += grad.abs().sum(dim=(0, 1)).double().cpu()
    return [(a / len(images)).numpy() for a in acc]


def draw(maps: dict, ratios: dict, out_dir: str, decades: float):
    """One PNG per (model, stage) and a grid of all."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    def show(ax, key):
        m = maps[key]
        norm = LogNorm(vmin=m.max() * 10**-decades, vmax=m.max())
        im = ax.imshow(np.clip(m, m.max() * 10**-decades, None),
                       cmap='RdYlGn', norm=norm)
        r = ratios[key]
        ax.set_title(f'{key}\nt=0.2: {r["0.2"]:.3f}  t=0.99: {r["0.99"]:.3f}',
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        return im

    for key in maps:
        fig, ax = plt.subplots(figsize=(4, 4))
        fig.colorbar(show(ax, key), ax=ax, fraction=0.046)
        fig.savefig(osp.join(out_dir, f'{key}.png'), dpi=80,
                    bbox_inches='tight')
        plt.close(fig)
    tags = sorted({k.rsplit('_stage', 1)[0] for k in maps},
                  key=lambda t: list(maps).index(f'{t}_stage3'))
    fig, axes = plt.subplots(2, len(tags), figsize=(3 * len(tags), 6.2),
                             squeeze=False)
    for j, tag in enumerate(tags):
        for i, stage in enumerate((3, 4)):
            show(axes[i, j], f'{tag}_stage{stage}')
    fig.tight_layout()
    fig.savefig(osp.join(out_dir, 'erf.png'), dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('images', help='folder of images (searched recursively)')
    p.add_argument('--models', nargs='+', default=['overlock_t'],
                   help='NAME or NAME=CHECKPOINT (see above)')
    p.add_argument('--num-images', type=int, default=300)
    p.add_argument('--size', type=int, default=1024,
                   help='input side (RepLKNet: 1024)')
    p.add_argument('--out-dir', default='work_dirs/erf')
    p.add_argument('--decades', type=float, default=3.,
                   help='log range of the heat maps')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the random initialisations')
    args = p.parse_args(argv)
    if args.num_images < 1 or args.size < 32:
        raise SystemExit('error: --num-images must be >= 1 and --size >= 32')
    images = list_images(args.images, args.num_images)
    os.makedirs(args.out_dir, exist_ok=True)
    maps, ratios = {}, {}
    for spec in args.models:
        torch.manual_seed(args.seed)
        tag, model, stages = build(spec, args.size)
        model.to(args.device)
        for stage, m in zip((3, 4), erf_maps(stages, images, args.size,
                                             args.device)):
            key = f'{tag}_stage{stage}'
            maps[key] = m
            ratios[key] = {str(t): area_ratio(m, t) for t in THRESHOLDS}
    draw(maps, ratios, args.out_dir, args.decades)
    np.savez_compressed(osp.join(args.out_dir, 'erf.npz'), **maps)
    with open(osp.join(args.out_dir, 'erf_ratios.json'), 'w') as f:
        json.dump(dict(images=len(images), size=args.size, ratios=ratios), f,
                  indent=1)
    print(f'high-contribution area ratio ({len(images)} images, '
          f'{args.size}x{args.size}):')
    print(f'{"model / stage":<48}' + ''.join(f'{f"t={t}":>9}'
                                             for t in THRESHOLDS))
    for key, r in ratios.items():
        print(f'{key:<48}' + ''.join(f'{r[str(t)]:>9.4f}'
                                     for t in THRESHOLDS))
    print(f'heat maps in {args.out_dir}/ (erf.png: all)')


if __name__ == '__main__':
    main()
