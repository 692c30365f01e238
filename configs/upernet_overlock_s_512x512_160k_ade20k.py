# UperNet with OverLoCK-S: the T recipe with this arch's channels, drop
# path rate and ImageNet weights. Paper: 51.3 mIoU.
_base_ = './upernet_overlock_t_512x512_160k_ade20k.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 448, 640]),
    auxiliary_head=dict(in_channels=448))
