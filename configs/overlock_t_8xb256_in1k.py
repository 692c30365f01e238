# OverLoCK-T on ImageNet-1K, 224x224: the official recipe
# (LMMMEng/OverLoCK scripts/train_t_model.sh with the defaults of its timm
# train.py; README "Classification" lists it row by row). 8 GPUs x 256.
# Paper: 84.2 top-1.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmpretrain_overlock'],
                      allow_failed_imports=False)

model = dict(
    type='OverLoCKClassifier',
    arch='t',
    num_classes=1000,
    drop_path_rate=0.15,  # --drop-path
    aux_loss_weight=0.4,  # --aux-loss-ratio: loss = main + 0.4 * aux
    # timm's Mixup(label_smoothing=0.1) + SoftTargetCrossEntropy: mixed
    # one-hot targets smoothed by 0.1, soft cross-entropy
    cls_head=dict(
        type='ClsHead',
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                  mode='original'),
        topk=(1, 5)),
    # --mixup 0.8 --cutmix 1.0, one of the two per batch (switch prob 0.5)
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# training data: timm's create_transform(is_training=True) with upstream's
# defaults: random-resized crop (scale 0.08-1, ratio 3/4-4/3) with a random
# bilinear / bicubic interpolation (--train-interpolation random), flip 0.5,
# RandAugment rand-m9-mstd0.5-inc1 (colour jitter is off with it), random
# erasing 0.25 in 'pixel' mode (per-pixel normal noise)
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomResizedCrop', scale=224, backend='pillow',
              interpolation='bilinear')],
        [dict(type='RandomResizedCrop', scale=224, backend='pillow',
              interpolation='bicubic')],
    ]),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2,
         total_level=10, magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean],
                      interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand',
         min_area_ratio=0.02, max_area_ratio=1 / 3, fill_color=bgr_mean,
         fill_std=bgr_std),
    dict(type='PackInputs'),
]
# validation as upstream's validate.py: resize the short side to
# floor(224 / crop_pct) (bicubic), centre crop 224; crop_pct per arch from
# upstream's model default_cfg (XT 0.925, T 0.95, S 0.95, B 0.975)
crop_pct = 0.95
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=int(224 / crop_pct), edge='short',
         backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=256, num_workers=10,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=128, num_workers=10,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

# AdamW (timm create_optimizer_v2): lr 1e-3 per 1024 images (--lr 1e-3
# --auto-lr: 2e-3 at 8 x 256), weight decay 0.05 on every parameter of two
# or more dimensions (no decay for biases, norms and other 1-D parameters),
# AMP (--native-amp), gradient norm clipped at 5 (--clip-grad 5)
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8,
                   betas=(0.9, 0.999)),
    paramwise_cfg=dict(flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0, norm_type=2))
auto_scale_lr = dict(enable=True, base_batch_size=1024)

# timm's cosine schedule, stepped per epoch: 5 warm-up epochs from 1e-6
# (start_factor = 1e-6 / 2e-3 at the recipe's batch), cosine to 1e-5 at epoch
# 300, then timm's 10 cool-down epochs at 1e-5 (--cooldown-epochs 10)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 2e-3, by_epoch=True, begin=0,
         end=5, convert_to_iter_based=False),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5,
         end=300, T_max=295, convert_to_iter_based=False),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=1)

# model EMA with decay 0.9999 per iteration, buffers included (timm
# ModelEmaV2); validation and the saved state_dict use the EMA weights
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, update_buffers=True,
         priority='ABOVE_NORMAL')
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),  # --log-interval 100
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=5,
                    save_best='auto'))  # --checkpoint-hist 5, best top-1
# upstream converts the model to SyncBatchNorm when distributed
sync_bn = 'torch'
randomness = dict(seed=42, diff_rank_seed=True)  # --seed 42, seed + rank
