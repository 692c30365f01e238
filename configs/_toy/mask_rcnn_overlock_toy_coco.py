# Mask R-CNN + FPN with a small OverLoCK on the embedded toy COCO dataset
# (tools/misc/make_toy_data.py): trains from scratch on CPU in minutes.
_base_ = '../mask_rcnn_overlock_t_fpn_1x_coco.py'

data_root = 'data/toy/coco/'
classes = ('circle', 'square', 'triangle')
metainfo = dict(classes=classes,
                palette=[(220, 20, 60), (0, 130, 230), (30, 170, 60)])
img_scale = (128, 128)

model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True,
            depths=[1, 1, 2, 1],
            sub_depths=[2, 1],
            embed_dims=[32, 48, 64, 96],
            kernel_sizes=[7, 7, 7, 5],
            mlp_ratios=[2, 2, 2, 2],
            sub_num_heads=[2, 2],
            sub_mlp_ratios=[2, 2],
            smk_size=3),
        drop_path_rate=0.,
        # from scratch, the upstream per-position LayerNorm on the outputs
        # learns ~30x slower (README, "The toy run"); GroupNorm(1) keeps
        # the contrast between positions (same parameters)
        out_norm='group',
        init_cfg=None),
    neck=dict(in_channels=[32, 48, 88, 120], out_channels=64),
    rpn_head=dict(
        in_channels=64, feat_channels=64,
        anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=3)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_iters = 1000
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters,
         eta_min=1e-5),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05, fused=True),
                     clip_grad=dict(max_norm=10.))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=1000, max_keep_ckpts=2,
                    save_best=None))
log_processor = dict(by_epoch=False)
# a fixed seed: the README's numbers are reproducible (runs agree within
# 0.03 AP; CPU kernels chosen by timing may round differently)
randomness = dict(seed=0)
