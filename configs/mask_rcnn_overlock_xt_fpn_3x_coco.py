# Mask R-CNN + FPN with OverLoCK-XT, 3x schedule: the T recipe with
# this arch's channels, drop path rate and ImageNet weights.
# The paper reports no COCO result for OverLoCK-XT.
_base_ = './mask_rcnn_overlock_t_fpn_3x_coco.py'

pretrained = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224.pth'  # noqa
model = dict(
    backbone=dict(
        arch='xt',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[56, 112, 340, 420]))
