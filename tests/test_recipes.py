"""Our configs against the official recipes (LMMMEng/OverLoCK,
detection/configs/maskrcnn_overlock/*.py and segmentation/configs/overlock/
*.py with their mmdet 2.x / mmseg 0.x bases), value by value."""
import os

import pytest
import torch

from conftest import ROOT

mmengine = pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402

#: written from the upstream files named in the comments
DET = dict(  # maskrcnn_overlock/mask_rcnn_overlock_{t,s,b}_in1k_fpn_{1x,3x}
    wd=0.05, batch=2, warmup_iters=500, warmup_ratio=0.001,  # schedule_1x/3x
    checkpoint=dict(interval=1, max_keep_ckpts=1, save_last=True,
                    save_best='auto'))
UPSTREAM = {
    **{f'mask_rcnn_overlock_{a}_fpn_1x_coco.py': dict(
        DET, dpr=dpr, lr=2e-4, epochs=12, milestones=[8, 11])
       for a, dpr in (('t', 0.2), ('s', 0.4), ('b', 0.6))},
    **{f'mask_rcnn_overlock_{a}_fpn_3x_coco.py': dict(
        DET, dpr=dpr, lr=1e-4, epochs=36, milestones=[27, 33])
       for a, dpr in (('t', 0.2), ('s', 0.4), ('b', 0.6))},
    # overlock/upernet_overlock_{tiny,small,base}_ade20k_8xb2.py
    **{f'upernet_overlock_{a}_512x512_160k_ade20k.py': dict(
        dpr=dpr, lr=6e-5, wd=0.01, batch=2, iters=160000, warmup_iters=1500,
        warmup_ratio=1e-6, poly_power=1.0, poly_min=0.0, val_interval=8000,
        checkpoint=dict(interval=8000, max_keep_ckpts=1, save_best='mIoU'))
       for a, dpr in (('t', 0.2), ('s', 0.3), ('b', 0.5))},
}
#: no upstream config: our choice (README, "Configs")
OURS = {'mask_rcnn_overlock_xt_fpn_1x_coco.py': 0.1,
        'mask_rcnn_overlock_xt_fpn_3x_coco.py': 0.1,
        'upernet_overlock_xt_512x512_160k_ade20k.py': 0.1,
        'cascade_mask_rcnn_overlock_t_fpn_3x_coco.py': 0.2,
        'cascade_mask_rcnn_overlock_s_fpn_3x_coco.py': 0.4,
        'cascade_mask_rcnn_overlock_b_fpn_3x_coco.py': 0.6}
#: upstream's weight decay exemptions (paramwise_cfg custom_keys)
NO_DECAY_KEYS = ('norm', 'relative_position_bias_table', 'absolute_pos_embed')


def _cfg(name):
    return Config.fromfile(os.path.join(ROOT, 'configs', name))


#: ImageNet classification: tests/test_classification.py checks them
CLASSIFICATION = {f'overlock_{a}_8xb256_in1k.py' for a in ('xt', 't', 's', 'b')}


def test_every_config_is_listed():
    names = {n for n in os.listdir(os.path.join(ROOT, 'configs'))
             if n.endswith('.py')}
    assert names == set(UPSTREAM) | set(OURS) | CLASSIFICATION


@pytest.mark.parametrize('name', sorted(UPSTREAM))
def test_config_equals_upstream_recipe(name):
    want, cfg = UPSTREAM[name], _cfg(name)
    assert cfg.model.backbone.drop_path_rate == want['dpr']
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == 'AdamW'
    assert opt.optimizer.lr == want['lr']
    assert opt.optimizer.betas == (0.9, 0.999)
    assert opt.optimizer.weight_decay == want['wd']
    assert opt.get('clip_grad') is None and opt.type == 'OptimWrapper'
    assert opt.paramwise_cfg == dict(custom_keys={
        k: dict(decay_mult=0.) for k in NO_DECAY_KEYS})
    assert cfg.train_dataloader.batch_size == want['batch']  # x 8 GPUs
    warm, main = cfg.param_scheduler
    assert warm.type == 'LinearLR' and not warm.by_epoch
    assert (warm.begin, warm.end) == (0, want['warmup_iters'])
    assert warm.start_factor == want['warmup_ratio']
    ckpt = cfg.default_hooks.checkpoint
    for k, v in want['checkpoint'].items():
        assert ckpt[k] == v, k
    if 'epochs' in want:
        assert cfg.train_cfg.max_epochs == want['epochs']
        assert cfg.train_cfg.get('val_interval', 1) == 1
        assert main.type == 'MultiStepLR' and main.by_epoch
        assert main.milestones == want['milestones'] and main.gamma == 0.1
        train = cfg.train_dataloader.dataset.pipeline
        if want['epochs'] == 36:  # upstream's AutoAugment, DETR-style
            big = [(s, 1333) for s in range(480, 801, 32)]
            (choice, ) = [t for t in train if t['type'] == 'RandomChoice']
            one, two = choice.transforms
            assert [t['type'] for t in one] == ['RandomChoiceResize']
            assert one[0].scales == big and one[0].keep_ratio
            assert two[0].scales == [(400, 1333), (500, 1333), (600, 1333)]
            assert (two[1].type, two[1].crop_type, two[1].crop_size,
                    two[1].allow_negative_crop) == (
                        'RandomCrop', 'absolute_range', (384, 600), True)
            assert two[2].scales == big
        else:
            assert dict(type='Resize', scale=(1333, 800),
                        keep_ratio=True) in train
        test = cfg.test_dataloader.dataset.pipeline
        resize = [t for t in test if t['type'] == 'Resize']
        assert resize == [dict(type='Resize', scale=(1333, 800),
                               keep_ratio=True)]
    else:
        assert cfg.train_cfg.max_iters == want['iters']
        assert cfg.train_cfg.val_interval == want['val_interval']
        assert main.type == 'PolyLR' and not main.by_epoch
        assert (main.begin, main.end) == (want['warmup_iters'], want['iters'])
        assert main.power == want['poly_power']
        assert main.eta_min == want['poly_min']
        for loader in (cfg.val_dataloader, cfg.test_dataloader):
            types = [t['type'] for t in loader.dataset.pipeline]
            assert types == ['LoadImageFromFile', 'Resize',
                             'ResizeToMultiple', 'LoadAnnotations',
                             'PackSegInputs']
            resize, multiple = loader.dataset.pipeline[1:3]
            assert resize.scale == (2048, 512) and resize.keep_ratio
            assert multiple.size_divisor == 32
            assert multiple.interpolation == 'bicubic'


@pytest.mark.parametrize('name', sorted(OURS))
def test_configs_without_upstream_recipe(name):
    cfg = _cfg(name)
    assert cfg.model.backbone.drop_path_rate == OURS[name]
    assert cfg.optim_wrapper.paramwise_cfg == dict(custom_keys={
        k: dict(decay_mult=0.) for k in NO_DECAY_KEYS})


def test_seg_test_pipeline_runs_bicubic_to_a_multiple_of_32():
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope
    import mmseg.datasets  # noqa: F401  (registers the transforms)
    init_default_scope('mmseg')
    cfg = _cfg('upernet_overlock_t_512x512_160k_ade20k.py')
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline[1:3])
    img = (torch.rand(375, 500, 3) * 255).numpy().astype('uint8')
    out = pipeline(dict(img=img, img_shape=img.shape[:2],
                        ori_shape=img.shape[:2]))
    # 375x500 -> short side 512 (long side <= 2048): 512x683 -> the next
    # multiples of 32
    assert out['img'].shape[:2] == (512, 704)
    assert out['img_shape'] == (512, 704)


def test_weight_decay_exemptions_follow_upstreams_rule():
    """The parameters without weight decay are exactly those whose name
    contains one of upstream's keys: the LayerNorms (``norm1``,
    ``extra_norm``...), not the BatchNorms of the stem and dilated branches
    or the LayerNorm held in ``proj.0``, which upstream decays."""
    from mmengine.optim import build_optim_wrapper

    from overlock_mm.runtime import build_model
    cfg = _cfg('mask_rcnn_overlock_t_fpn_1x_coco.py')
    cfg.model.backbone.arch = dict(
        depths=[1, 1, 1, 1], sub_depths=[1, 1], embed_dims=[16, 24, 32, 48],
        kernel_sizes=[7, 7, 7, 5], mlp_ratios=[2, 2, 2, 2],
        sub_num_heads=[2, 3], sub_mlp_ratios=[2, 2])
    cfg.model.neck.in_channels = [16, 24, 44, 60]
    model = build_model(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in wrapper.optimizer.param_groups
                if g['weight_decay'] == 0 for p in g['params']}
    decayed = {names[id(p)] for g in wrapper.optimizer.param_groups
               if g['weight_decay'] == 0.05 for p in g['params']}
    assert no_decay | decayed == set(names.values())
    upstream = {n for n in names.values()
                if any(k in n for k in NO_DECAY_KEYS)}
    assert no_decay == upstream
    assert {'backbone.extra_norm.0.weight', 'backbone.extra_norm.4.bias',
            'backbone.sub_blocks3.0.norm1.weight'} <= no_decay
    assert {'backbone.patch_embed1.1.weight',
            'backbone.blocks1.0.proj.1.origin_bn.weight',
            'backbone.blocks1.0.proj.0.weight',
            'backbone.blocks1.0.proj.4.bias'} <= decayed
