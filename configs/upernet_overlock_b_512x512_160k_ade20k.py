# UperNet with OverLoCK-B: the T recipe with this arch's channels, drop
# path rate and ImageNet weights. Paper: 51.7 mIoU.
_base_ = './upernet_overlock_t_512x512_160k_ade20k.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[80, 160, 528, 720]),
    auxiliary_head=dict(in_channels=528))
