#!/usr/bin/env python
"""Class activation maps of the stage-3 and stage-4 outputs of an OverLoCK
classifier (the OverLoCK paper's Figure 2), with the ``grad-cam`` library.

    python tools/analysis/gradcam.py CHECKPOINT IMG [IMG ...] [--classes 3 | --classes cat dog] \\
        [--method gradcam] [--size 224] [--out-dir work_dirs/gradcam]

CHECKPOINT is any OverLoCK classification checkpoint (official release,
timm, ours; plain or re-parameterised; arch read from it). ``--classes``
gives one class per image, or one for all (an index, or a name when the
checkpoint's ``meta.dataset_meta.classes`` has them); by default each image's
top-1 prediction. Each image is resized to ``--size`` squared and
ImageNet-normalised. For each image ``<out>/<name>_cam.png`` shows the image
and the two maps laid over it side by side; ``<out>/<name>_cam.npz`` holds
the maps (``stage3``, ``stage4``: ``(size, size)`` in ``[0, 1]``).

The stage outputs are the concatenated Focus-Net features and context of
stage 3 (the input of ``patch_embedx``) and the stage-4 features (the input
of ``head``); identity taps placed there by forward pre-hooks make them the
target layers of ``pytorch_grad_cam`` without changing the network.
Requires ``pip install "grad-cam>=1.3.7,<1.5.0"`` (the range mmpretrain
1.2.0 accepts).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _grad_cam():
    try:
        import pytorch_grad_cam
    except ImportError:
        raise SystemExit('error: this tool needs the grad-cam package: pip '
                         'install "grad-cam>=1.3.7,<1.5.0"') from None
    return pytorch_grad_cam


def methods():
    """CAM methods by their command-line name."""
    cam = _grad_cam()
    return {'gradcam': cam.GradCAM, 'gradcam++': cam.GradCAMPlusPlus,
            'xgradcam': cam.XGradCAM, 'layercam': cam.LayerCAM,
            'eigencam': cam.EigenCAM, 'eigengradcam': cam.EigenGradCAM}


class StageTaps(nn.Module):
    """An OverLoCK classifier with identity modules ``stage3`` / ``stage4``
    on its stage outputs, for hooks that need a module there.

    Forward pre-hooks route the stage-3 output (features and context,
    concatenated) and the stage-4 output through the taps; the computation
    is unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stage3 = nn.Identity()
        self.stage4 = nn.Identity()
        model.patch_embedx.register_forward_pre_hook(self._tap3)
        model.head.register_forward_pre_hook(self._tap4)

    def _tap3(self, module, args):
        x, ctx = args
        y = self.stage3(torch.cat([x, ctx], dim=1))
        return tuple(torch.split(y, [x.shape[1], ctx.shape[1]], dim=1))

    def _tap4(self, module, args):
        return (self.stage4(args[0]), ) + tuple(args[1:])

    def forward(self, x):
        return self.model(x)


def load_classifier(path: str):
    """``(model, class_names or None)`` of a classification checkpoint."""
    from overlock.checkpoint import safe_load
    from overlock.convert import (build_from_state_dict, find_backbone,
                                  weights_of)
    raw = safe_load(path)
    _, sd = find_backbone(weights_of(raw)[1])
    kind, model = build_from_state_dict(sd)
    if kind != 'classification':
        raise SystemExit(f'error: {path} is a {kind} checkpoint; Grad-CAM '
                         f'needs a classifier (the head gives the class '
                         f'scores).')
    meta = raw.get('meta') if isinstance(raw, dict) else None
    names = ((meta or {}).get('dataset_meta') or {}).get('classes')
    return model, (list(names) if names else None)


def parse_classes(values, n_images: int, num_classes: int, names):
    """One class index (or ``None``: top-1) per image."""
    if not values:
        return [None] * n_images
    if len(values) not in (1, n_images):
        raise SystemExit(f'error: give one class for all images or one per '
                         f'image ({n_images}), got {len(values)}')
    out = []
    for v in values:
        if v.lstrip('-').isdigit():
            c = int(v)
        elif names and v in names:
            c = names.index(v)
        else:
            raise SystemExit(f'error: unknown class {v!r}: use an index in '
                             f'0..{num_classes - 1}' +
                             (f' or one of {names}' if names else ''))
        if not 0 <= c < num_classes:
            raise SystemExit(f'error: class {c} out of range 0..'
                             f'{num_classes - 1}')
        out.append(c)
    return out * n_images if len(out) == 1 else out


def load_image(path: str, size: int):
    """``(rgb float32 (size, size, 3) in [0, 1], normalised (1, 3, size,
    size) tensor)``."""
    from PIL import Image
    if not osp.isfile(path):
        raise SystemExit(f'error: image not found: {path}')
    img = Image.open(path).convert('RGB').resize((size, size), Image.BICUBIC)
    rgb = np.asarray(img, dtype=np.float32) / 255.
    x = (torch.from_numpy(rgb) - torch.tensor(MEAN)) / torch.tensor(STD)
    return rgb, x.permute(2, 0, 1)[None].contiguous()


def stage_cams(taps: StageTaps, x: torch.Tensor, target: int,
               method: str = 'gradcam'):
    """``{'stage3': map, 'stage4': map}`` for class ``target`` (maps of the
    input size in ``[0, 1]``)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    cam_cls = methods()[method]
    out = {}
    for name in ('stage3', 'stage4'):
        with cam_cls(model=taps, target_layers=[getattr(taps, name)]) as cam:
            out[name] = cam(input_tensor=x,
                            targets=[ClassifierOutputTarget(target)])[0]
    return out


def save_figure(path: str, rgb, cams: dict, title: str):
    """The image and the two overlays side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    panels = [('image', rgb)] + [
        (f'stage {name[-1]}', show_cam_on_image(rgb, cam, use_rgb=True))
        for name, cam in cams.items()]
    for ax, (label, img) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint')
    p.add_argument('images', nargs='+')
    p.add_argument('--classes', nargs='+', default=None,
                   help='class index or name, one for all or one per image '
                        '(default: the top-1 prediction)')
    p.add_argument('--method', default='gradcam',
                   choices=['gradcam', 'gradcam++', 'xgradcam', 'layercam',
                            'eigencam', 'eigengradcam'])
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--out-dir', default='work_dirs/gradcam')
    args = p.parse_args(argv)
    _grad_cam()
    # our own training checkpoints carry mmengine's message hub
    from overlock_mm.runtime import mmengine_checkpoints
    with mmengine_checkpoints():
        model, names = load_classifier(args.checkpoint)
    targets = parse_classes(args.classes, len(args.images),
                            model.num_classes, names)
    taps = StageTaps(model).eval()
    os.makedirs(args.out_dir, exist_ok=True)
    for path, target in zip(args.images, targets):
        rgb, x = load_image(path, args.size)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top1 = int(probs.argmax())
        target = top1 if target is None else target
        cams = stage_cams(taps, x, target, args.method)

        def label(c):
            return f'{c} ({names[c]})' if names else str(c)

        title = (f'{osp.basename(path)}: {args.method} for class '
                 f'{label(target)}, p={probs[target]:.2f}; top-1 '
                 f'{label(top1)}')
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0])
        save_figure(f'{stem}_cam.png', rgb, cams, title)
        np.savez_compressed(f'{stem}_cam.npz', **cams)
        print(f'{title} -> {stem}_cam.png')


if __name__ == '__main__':
    main()
