# UperNet with OverLoCK-T, 512x512 crops, 160k iterations, ADE20K.
# Paper: 50.3 mIoU. 8 GPUs x 2 images.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa
custom_imports = dict(imports=['mmseg_overlock'], allow_failed_imports=False)

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='OverLoCK',
        arch='t',
        fuse_overview=False,  # the segmentation flavour (official ADE20K weights)
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 384, 640], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # upstream's rule: no decay for parameters whose name contains one of
    # these (so the BatchNorms of the stem and the dilated branches decay)
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'absolute_pos_embed': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000,
         by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000,
                 val_interval=8000)
train_dataloader = dict(batch_size=2)
# upstream: evaluation (above) and a checkpoint every 8000 iterations,
# keeping the best (mIoU) and the latest
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=8000, max_keep_ckpts=1,
                    save_best='mIoU'))
# upstream's test resize: fit into 2048x512 keeping the ratio, then to a
# multiple of 32 with bicubic interpolation (the official ADE20K checkpoints
# were evaluated this way); annotations stay at their original size
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32, interpolation='bicubic'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
