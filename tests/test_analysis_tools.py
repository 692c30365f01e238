"""tools/analysis/erf.py and tools/analysis/gradcam.py on generated images."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_ARCH, randomize_
from overlock import OverLoCK

sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))
sys.path.insert(0, os.path.join(ROOT, 'tools', 'misc'))
import erf  # noqa: E402


# ------------------------------------------------------------------ ERF
def test_area_ratio_exact():
    point = np.zeros((9, 9))
    point[4, 4] = 3.
    for t in erf.THRESHOLDS:
        assert erf.area_ratio(point, t) == 1 / 81
    ones = np.ones((9, 9))
    # sides 1, 3, 5, 7, 9 hold 1, 9, 25, 49, 81 of 81
    assert erf.area_ratio(ones, 0.2) == 25 / 81    # 16.2 -> 25
    assert erf.area_ratio(ones, 0.3) == 25 / 81    # 24.3 -> 25
    assert erf.area_ratio(ones, 0.5) == 49 / 81    # 40.5 -> 49
    assert erf.area_ratio(ones, 0.99) == 1.0       # 80.19 -> 81
    assert erf.area_ratio(ones, 49 / 81) == 49 / 81  # exactly reached
    # even sides: centre (2, 2), squares clipped at the border
    assert erf.area_ratio(np.ones((4, 4)), 0.5) == 9 / 16
    assert erf.area_ratio(np.ones((4, 4)), 0.6) == 1.0
    ring = np.zeros((7, 7))
    ring[0, :] = 1.  # all mass on the top row: only the whole map holds it
    assert erf.area_ratio(ring, 0.2) == 1.0
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match='threshold'):
            erf.area_ratio(ones, bad)
    with pytest.raises(ValueError, match='non-negative'):
        erf.area_ratio(-ones, 0.5)
    with pytest.raises(ValueError, match='zero everywhere'):
        erf.area_ratio(np.zeros((3, 3)), 0.5)


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    from make_toy_data import make_image
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for i in range(3):
        make_image(rng, (80, 80))[0].save(folder / f'{i}.png')
    return folder


def test_erf_tool(tmp_path, image_dir, capsys):
    ckpt = tmp_path / 'det.pth'
    model = randomize_(OverLoCK(TINY_ARCH, fuse_overview=True), seed=2)
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / 'erf'
    erf.main([str(image_dir), '--models', f'overlock={ckpt}', 'resnet18',
              '--num-images', '2', '--size', '64', '--out-dir', str(out)])
    printed = capsys.readouterr().out
    assert 'high-contribution area ratio (2 images, 64x64)' in printed
    keys = ['overlock_det_stage3', 'overlock_det_stage4', 'resnet18_stage3',
            'resnet18_stage4']
    for key in keys:
        assert (out / f'{key}.png').stat().st_size > 1000
        assert key in printed
    assert (out / 'erf.png').stat().st_size > 1000
    maps = np.load(out / 'erf.npz')
    assert sorted(maps.files) == sorted(keys)
    ratios = json.loads((out / 'erf_ratios.json').read_text())
    assert ratios['images'] == 2 and ratios['size'] == 64
    for key in keys:
        m = maps[key]
        assert m.shape == (64, 64) and (m >= 0).all() and m.max() > 0
        # the centre half holds more than its share of the area
        assert m[16:48, 16:48].sum() > 0.25 * m.sum()
        r = [ratios['ratios'][key][str(t)] for t in erf.THRESHOLDS]
        assert all(0 < a <= b <= 1 for a, b in zip(r, r[1:]))
        assert r == [erf.area_ratio(m, t) for t in erf.THRESHOLDS]
    # ResNet-18's stage 3 sees less than its stage 4
    assert ratios['ratios']['resnet18_stage3']['0.5'] <= \
        ratios['ratios']['resnet18_stage4']['0.5']


def test_erf_tool_errors(tmp_path, image_dir):
    with pytest.raises(SystemExit, match='no .* image under'):
        erf.main([str(tmp_path), '--models', 'resnet18'])
    with pytest.raises(SystemExit, match='unknown model'):
        erf.main([str(image_dir), '--models', 'no_such_net', '--size', '64'])
    with pytest.raises(SystemExit, match='image folder not found'):
        erf.main([str(tmp_path / 'missing')])


# ------------------------------------------------------------- Grad-CAM
@pytest.fixture(scope='module')
def toy_classifier(tmp_path_factory):
    """A tiny OverLoCK classifier trained for a few steps on shape images,
    saved as a checkpoint with class names; and held-out images."""
    import train_toy_classifier as toy
    folder = tmp_path_factory.mktemp('toy_cls')
    torch.manual_seed(0)
    x, y, _ = toy.make_dataset(48, 64, seed=0)
    model = toy.train(toy.build_model(), x, y, steps=10, batch=6)
    path = folder / 'cls.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=toy.CLASSES))), path)
    _, _, pils = toy.make_dataset(3, 64, seed=1)
    images = []
    for i, img in enumerate(pils):
        images.append(str(folder / f'val{i}.png'))
        img.save(images[-1])
    return model, path, images


def test_gradcam_tool(tmp_path, toy_classifier, capsys):
    pytest.importorskip('pytorch_grad_cam')
    import gradcam
    model, path, images = toy_classifier
    out = tmp_path / 'cam'
    # default: each image's top-1 class
    gradcam.main([str(path), *images, '--size', '64', '--out-dir', str(out)])
    printed = capsys.readouterr().out
    assert printed.count('gradcam for class') == 3
    for img in images:
        stem = os.path.splitext(os.path.basename(img))[0]
        assert (out / f'{stem}_cam.png').stat().st_size > 1000
        cams = np.load(out / f'{stem}_cam.npz')
        assert sorted(cams.files) == ['stage3', 'stage4']
        for name in cams.files:
            cam = cams[name]
            assert cam.shape == (64, 64)
            assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
            assert cam.std() > 1e-3, (stem, name)  # not constant
    # a class by name, for one image
    gradcam.main([str(path), images[0], '--classes', 'square', '--size',
                  '64', '--out-dir', str(tmp_path / 'sq')])
    assert 'gradcam for class 1 (square)' in capsys.readouterr().out
    assert (tmp_path / 'sq' / 'val0_cam.png').is_file()
    # the taps do not change the network's outputs
    taps = gradcam.StageTaps(gradcam.load_classifier(str(path))[0]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(taps(x), model.eval()(x))


def test_gradcam_cam_follows_the_stage_gradients(toy_classifier):
    """The library's Grad-CAM on the taps equals ReLU(sum_c mean(dy/dA_c) A_c)
    computed here from the stage outputs, up to its min-max scaling."""
    pytest.importorskip('pytorch_grad_cam')
    import gradcam
    model, path, images = toy_classifier
    taps = gradcam.StageTaps(gradcam.load_classifier(str(path))[0]).eval()
    _, x = gradcam.load_image(images[0], 64)
    feats = {}
    hooks = [getattr(taps, n).register_forward_hook(
        lambda m, i, o, n=n: feats.__setitem__(n, o)) for n in
        ('stage3', 'stage4')]
    logits = taps(x)
    target = int(logits.argmax())
    score = logits[0, target]
    grads = torch.autograd.grad(score, [feats['stage3'], feats['stage4']])
    for h in hooks:
        h.remove()
    cams = gradcam.stage_cams(taps, x, target)
    for name, g in zip(('stage3', 'stage4'), grads):
        a = feats[name].detach()
        cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0]
        assert cam.max() > 0
        cam = cam / cam.max()
        # compare at the feature resolution (the library upsamples)
        small = torch.nn.functional.interpolate(
            torch.from_numpy(cams[name])[None, None], size=cam.shape,
            mode='area')[0, 0]
        assert torch.corrcoef(torch.stack([small.flatten(),
                                           cam.flatten()]))[0, 1] > 0.9


def test_gradcam_errors(tmp_path, toy_classifier):
    pytest.importorskip('pytorch_grad_cam')
    import gradcam
    _, path, images = toy_classifier
    with pytest.raises(SystemExit, match='unknown class'):
        gradcam.main([str(path), images[0], '--classes', 'hexagon'])
    with pytest.raises(SystemExit, match='out of range'):
        gradcam.main([str(path), images[0], '--classes', '3'])
    with pytest.raises(SystemExit, match='one per image'):
        gradcam.main([str(path), *images[:3], '--classes', '0', '1'])
    det = tmp_path / 'det.pth'
    torch.save(OverLoCK(TINY_ARCH).state_dict(), det)
    with pytest.raises(SystemExit, match='detection checkpoint'):
        gradcam.main([str(det), images[0]])
