# UperNet with OverLoCK-XT: the T recipe with this arch's channels, drop
# path rate and ImageNet weights. The paper reports no ADE20K result for OverLoCK-XT.
_base_ = './upernet_overlock_t_512x512_160k_ade20k.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='xt',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[56, 112, 340, 420]),
    auxiliary_head=dict(in_channels=340))
