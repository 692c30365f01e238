# Mask R-CNN + FPN with OverLoCK-T, 3x schedule (36 epochs) with the
# DETR-style multi-scale resize + random-crop augmentation, COCO 2017.
# Paper: 49.6 box AP / 43.9 mask AP. 8 GPUs x 2 images.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['mmdet_overlock'], allow_failed_imports=False)

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='OverLoCK',
        arch='t',
        fuse_overview=True,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 384, 640]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
