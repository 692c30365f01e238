# A small OverLoCK classifier on the toy classification crops (64x64 shapes:
# circle, square, triangle; tools/misc/make_toy_data.py --cls): trains from
# scratch on CPU in minutes. Its backbone arch is the toy Mask R-CNN's, so
# the checkpoint initialises that detector's backbone (init_cfg Pretrained:
# head / aux_head dropped, extra_norm / h_proj start fresh).
_base_ = '../overlock_t_8xb256_in1k.py'

data_root = 'data/toy/cls/'
classes = ('circle', 'square', 'triangle')
crop = 64

model = dict(
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
    num_classes=len(classes),
    projection=128,
    drop_path_rate=0.,
    cls_head=dict(loss=dict(type='CrossEntropyLoss', _delete_=True)),
    train_cfg=None)  # no Mixup / CutMix on ~700 crops
data_preprocessor = dict(num_classes=len(classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop, crop_ratio_range=(0.6, 1.0),
         backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='train', classes=classes,
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='val', classes=classes,
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = [dict(type='Accuracy', topk=(1, )),
                 dict(type='ExpectedCalibrationError', n_bins=10)]
test_evaluator = val_evaluator

optim_wrapper = dict(type='OptimWrapper', _delete_=True,
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
                     paramwise_cfg=dict(flat_decay_mult=0.0))
auto_scale_lr = dict(enable=False)
max_epochs = 6
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=40),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=2)
custom_hooks = []  # no EMA on a few hundred iterations
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1, save_best=None))
sync_bn = None
randomness = dict(seed=0, diff_rank_seed=False)
