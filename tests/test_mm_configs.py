"""Every config loads, resolves its mmdet::/mmseg:: bases, builds and runs."""
import glob
import os

import pytest
import torch

from conftest import ROOT

mmengine = pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402

# detection and segmentation; the classification configs (overlock_*.py,
# mmpretrain) are tested in tests/test_classification.py
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith('overlock_'))
TOY = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '_toy', '*.py'))
             if not os.path.basename(p).startswith('overlock_'))
EXPECTED = [
    f'mask_rcnn_overlock_{a}_fpn_{s}_coco.py' for a in ('xt', 't', 's', 'b')
    for s in ('1x', '3x')
] + [f'cascade_mask_rcnn_overlock_{a}_fpn_3x_coco.py' for a in ('t', 's', 'b')
     ] + [f'upernet_overlock_{a}_512x512_160k_ade20k.py'
          for a in ('xt', 't', 's', 'b')]
#: upstream's rates (XT and cascade: ours, see tests/test_recipes.py)
DROP_PATH = {'det': {'xt': 0.1, 't': 0.2, 's': 0.4, 'b': 0.6},
             'seg': {'xt': 0.1, 't': 0.2, 's': 0.3, 'b': 0.5}}


def test_all_named_configs_exist():
    names = {os.path.basename(c) for c in CONFIGS}
    assert set(EXPECTED) <= names


def _channels(backbone_cfg):
    from overlock import OverLoCK
    with torch.device('meta'):
        return OverLoCK(arch=backbone_cfg['arch']).channels


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_recipe(path):
    cfg = Config.fromfile(path)
    name = os.path.basename(path)
    bb = cfg.model.backbone
    assert bb.type == 'OverLoCK'
    arch = name.split('_overlock_')[1].split('_')[0]
    task = 'seg' if name.startswith('upernet') else 'det'
    assert bb.arch == arch and bb.drop_path_rate == DROP_PATH[task][arch]
    assert bb.init_cfg.checkpoint == ('https://github.com/LMMMEng/OverLoCK/'
                                      f'releases/download/v1/overlock_{arch}'
                                      '_in1k_224.pth')
    ch = list(_channels(bb))
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW'
    assert opt.paramwise_cfg.custom_keys['norm'] == dict(decay_mult=0.)
    if name.startswith(('mask_rcnn', 'cascade')):
        assert cfg.default_scope == 'mmdet'
        assert cfg.custom_imports.imports == ['mmdet_overlock']
        assert bb.fuse_overview is True
        assert cfg.model.neck.in_channels == ch
        assert opt.optimizer.weight_decay == 0.05
        assert cfg.train_dataloader.batch_size == 2
        epochs = 12 if '_1x_' in name else 36
        assert cfg.train_cfg.max_epochs == epochs
        assert opt.optimizer.lr == (2e-4 if epochs == 12 else 1e-4)
        if epochs == 36:  # DETR-style multi-scale + random crop
            assert any(t['type'] == 'RandomChoice'
                       for t in cfg.train_dataloader.dataset.pipeline)
    else:
        assert cfg.default_scope == 'mmseg'
        assert cfg.custom_imports.imports == ['mmseg_overlock']
        assert bb.fuse_overview is False
        assert cfg.model.decode_head.in_channels == ch
        assert cfg.model.auxiliary_head.in_channels == ch[2]
        assert opt.optimizer.lr == 6e-5 and opt.optimizer.weight_decay == 0.01
        assert cfg.train_cfg.max_iters == 160000
        assert cfg.param_scheduler[0].end == 1500
        assert cfg.param_scheduler[1].type == 'PolyLR'
        assert cfg.crop_size == (512, 512)


def _run_once(cfg):
    from overlock_mm.runtime import build_model
    model = build_model(cfg).eval()
    if cfg.default_scope == 'mmdet':
        from mmdet.structures import DetDataSample
    h, w = 96, 128
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        feats = model.extract_feat(x)
        if cfg.default_scope == 'mmdet':
            sample = DetDataSample(metainfo=dict(
                img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w),
                scale_factor=(1., 1.), batch_input_shape=(h, w)))
            preds = model.predict(x, [sample])
            assert len(preds) == 1 and 'bboxes' in preds[0].pred_instances
        else:
            logits = model._forward(x)
            assert logits.shape[:2] == (1, cfg.model.decode_head.num_classes)
    return model, feats


@pytest.mark.parametrize(
    'path', [p for p in CONFIGS if '_xt_' in p or '_t_' in p] + TOY,
    ids=os.path.basename)
def test_config_builds_and_runs(path):
    cfg = Config.fromfile(path)
    model, feats = _run_once(cfg)
    assert model.backbone.__class__.__name__ == 'OverLoCKBackbone'
    if cfg.default_scope == 'mmdet':
        assert len(feats) == 5  # FPN levels
        assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)
    else:
        assert [f.shape[1] for f in feats] == list(
            cfg.model.decode_head.in_channels)


@pytest.mark.parametrize('path', [p for p in CONFIGS
                                  if '_s_' in p or '_b_' in p],
                         ids=os.path.basename)
def test_large_configs_build(path):
    """S/B: the same code path; build on the meta device (shapes only)."""
    cfg = Config.fromfile(path)
    from overlock_mm.runtime import build_model
    with torch.device('meta'):
        model = build_model(cfg)
    assert model.backbone.channels == tuple(_channels(cfg.model.backbone))


def test_pretrained_init_cfg_uses_safe_reporting_loader(tmp_path, caplog):
    from mmengine.logging import MMLogger

    from conftest import TINY_ARCH
    from overlock_mm import OverLoCKBackbone
    src = OverLoCKBackbone(arch=TINY_ARCH)
    ckpt = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v
                               for k, v in src.state_dict().items()},
                'meta': {}}, ckpt)
    MMLogger.get_instance('test_init', log_level='INFO')
    m = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=dict(
        type='Pretrained', checkpoint=str(ckpt)))
    m.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    # mmengine's ``prefix`` selects the backbone's keys of a whole detector
    p = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=dict(
        type='Pretrained', checkpoint=str(ckpt), prefix='backbone'))
    p.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(p.state_dict()[k], v), k


def test_init_cfg_list_and_mistakes(tmp_path):
    """mmengine's list form: the ``Pretrained`` entry loads through our
    strict loader (a checkpoint that does not fit is an error, not hundreds
    of warnings), after the other entries; mistakes are named."""
    from conftest import TINY_ARCH, randomize_
    from overlock.checkpoint import CheckpointError
    from overlock_mm import OverLoCKBackbone
    src = randomize_(OverLoCKBackbone(arch=TINY_ARCH))
    ckpt = tmp_path / 'ours.pth'
    torch.save(src.state_dict(), ckpt)
    m = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=[
        dict(type='Constant', val=0., layer='Conv2d'),
        dict(type='Pretrained', checkpoint=str(ckpt))])
    m.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    zeros = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=[
        dict(type='Constant', val=0., layer='Conv2d')])
    zeros.init_weights()
    assert not zeros.patch_embed1[0].weight.any()
    torch.save(OverLoCKBackbone(arch='xt').state_dict(), tmp_path / 'xt.pth')
    with pytest.raises(CheckpointError, match='does not fit the model'):
        OverLoCKBackbone(arch=TINY_ARCH, init_cfg=[dict(
            type='Pretrained', checkpoint=str(tmp_path / 'xt.pth'))]
        ).init_weights()
    with pytest.raises(ValueError, match='Pretrained needs checkpoint='):
        OverLoCKBackbone(arch=TINY_ARCH, init_cfg=dict(
            type='Pretrained', ckpt=str(ckpt))).init_weights()
    with pytest.raises(TypeError, match='takes a dict with a type'):
        OverLoCKBackbone(arch=TINY_ARCH, init_cfg=str(ckpt)).init_weights()


def test_runner_refuses_a_checkpoint_with_none_of_the_model_tensors(
        tmp_path):
    """mmengine loads ``load_from`` / ``tools/test.py``'s checkpoint
    non-strictly: a backbone's weights given for a detector would load
    nothing and evaluate a random model. Our runner refuses that and says
    where the backbone's weights go; a checkpoint of the model loads."""
    from mmengine.model import BaseModel

    from conftest import TINY_ARCH
    from overlock import OverLoCK
    from overlock.checkpoint import CheckpointError
    from overlock_mm.runner import OverLoCKRunner

    class Detector(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = OverLoCK(TINY_ARCH)

        def forward(self, *args, **kwargs):
            return {}

    runner = OverLoCKRunner(model=Detector(), work_dir=str(tmp_path))
    backbone = tmp_path / 'backbone.pth'
    torch.save(OverLoCK(TINY_ARCH).state_dict(), backbone)
    with pytest.raises(CheckpointError, match=r"none of the model's tensors"
                       r".*model.backbone.init_cfg=dict\(type='Pretrained'"):
        runner.load_checkpoint(str(backbone))
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in
                               Detector().state_dict().items()}}, whole)
    runner.load_checkpoint(str(whole))  # prefix 'module.' revised: loads


def test_eval_flag_mapping():
    from overlock_mm.runtime import apply_eval_metrics
    det = Config.fromfile(os.path.join(
        ROOT, 'configs', 'mask_rcnn_overlock_t_fpn_1x_coco.py'))
    apply_eval_metrics(det, ['bbox', 'segm', 'proposal'])
    assert det.test_evaluator.metric == ['bbox', 'segm', 'proposal']
    with pytest.raises(ValueError, match='valid: bbox segm proposal'):
        apply_eval_metrics(det, ['mAP'])
    seg = Config.fromfile(os.path.join(
        ROOT, 'configs', 'upernet_overlock_t_512x512_160k_ade20k.py'))
    apply_eval_metrics(seg, ['mIoU', 'mDice'])
    assert seg.test_evaluator.iou_metrics == ['mIoU', 'mDice']
    with pytest.raises(ValueError, match='valid: mIoU mDice mFscore'):
        apply_eval_metrics(seg, ['bbox'])
