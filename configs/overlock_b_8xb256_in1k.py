# OverLoCK-B on ImageNet-1K, 224x224: the T recipe (official
# scripts/train_b_model.sh differs only in the model and its drop path
# rate) with this arch's validation crop ratio. Paper: 85.1 top-1.
_base_ = './overlock_t_8xb256_in1k.py'

model = dict(arch='b', drop_path_rate=0.5)
crop_pct = 0.975
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=int(224 / crop_pct), edge='short',
         backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
