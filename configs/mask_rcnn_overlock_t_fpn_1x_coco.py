# Mask R-CNN + FPN with OverLoCK-T, 1x schedule (12 epochs), COCO 2017.
# Paper: 48.3 box AP / 43.3 mask AP. 8 GPUs x 2 images.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_overlock'], allow_failed_imports=False)

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='OverLoCK',
        arch='t',
        fuse_overview=True,  # the detection flavour (official COCO weights)
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 384, 640]),
    # boxes in float32 under AMP: proposals decoded from float32 anchors
    # (mmdet's RPNHead rounds them to bfloat16: up to 7 px), RoIs pooled in
    # float32 (mmcv's RoIAlign has no bfloat16 kernels); in float32 these
    # are mmdet's RPNHead and SingleRoIExtractor
    rpn_head=dict(type='Float32RPNHead'),
    roi_head=dict(
        bbox_roi_extractor=dict(type='Float32RoIExtractor'),
        mask_roi_extractor=dict(type='Float32RoIExtractor')))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # upstream's rule: no decay for parameters whose name contains one of
    # these (so the BatchNorms of the stem and the dilated branches decay)
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'absolute_pos_embed': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
# upstream (mmdet 2.x schedule_1x): 500 linear warm-up iterations from 0.001,
# steps at epochs 8 and 11 of 12; evaluation every epoch keeping the
# best checkpoint and the last one
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1)
]
default_hooks = dict(
    checkpoint=dict(interval=1, max_keep_ckpts=1, save_last=True,
                    save_best='auto'))
