# Cascade Mask R-CNN + FPN with OverLoCK-S, 3x: the T recipe with this
# arch's channels, drop path rate and ImageNet weights.
_base_ = './cascade_mask_rcnn_overlock_t_fpn_3x_coco.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_s_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 448, 640]))
