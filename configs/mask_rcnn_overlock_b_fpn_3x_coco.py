# Mask R-CNN + FPN with OverLoCK-B, 3x schedule: the T recipe with
# this arch's channels, drop path rate and ImageNet weights.
# Paper: 51.4 box AP / 45.3 mask AP.
_base_ = './mask_rcnn_overlock_t_fpn_3x_coco.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[80, 160, 528, 720]))
