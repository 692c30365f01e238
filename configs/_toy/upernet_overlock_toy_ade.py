# UperNet with a small OverLoCK on the embedded toy ADE20K-layout dataset
# (tools/misc/make_toy_data.py): trains from scratch on CPU in minutes.
_base_ = '../upernet_overlock_t_512x512_160k_ade20k.py'

data_root = 'data/toy/ade/'
crop_size = (128, 128)
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[0, 0, 0], [220, 20, 60], [0, 130, 230],
                         [30, 170, 60]])
model = dict(
    data_preprocessor=dict(size=crop_size),
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
    decode_head=dict(in_channels=[32, 48, 88, 120], channels=64,
                     num_classes=4),
    auxiliary_head=dict(in_channels=88, channels=32, num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.jpg', seg_map_suffix='.png',
               reduce_zero_label=False)
train_dataloader = dict(
    _delete_=True, batch_size=2, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    _delete_=True, batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

# 1500 iterations: mIoU 78 with every class >= 65 (600: 56, triangles 8)
max_iters = 1500
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=50, end=max_iters,
         by_epoch=False),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=500, max_keep_ckpts=2,
                    save_best=None))
# a fixed seed: the README's numbers are reproducible
randomness = dict(seed=0)
