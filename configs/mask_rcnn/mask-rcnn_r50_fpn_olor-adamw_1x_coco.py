# Mask R-CNN R-50-FPN 1x on COCO (instance segmentation), with OLOR-AdamW.
#
# Mirrors mmdet's mask-rcnn_r50_fpn_1x_coco.py (schedule, data, model) with
# the AdamW setting of mmdet's AdamW Mask R-CNN recipes
# (mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py: lr 1e-4, betas (0.9, 0.999),
# weight decay 0.05), plus the layer-wise rollback on the backbone and OLORDriftHook, which
# only logs.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published. Stem and layer1 stay frozen (frozen_stages=1, as
# upstream). Weight decay is kept at 0.05 except on norm layers: per step it
# moves a weight by lr * wd = 5e-6 of itself, far below the review.
#
# Not the benchmark's choice yet: the detection cell these configs follow
# (COCO-like, many training images: benchmarks/PROTOCOL.md, det
# related-many) has its settings chosen and its confirmatory runs under way.
# What is known of r_max 0.01 there is an estimate, not a test: in its
# tuning runs (seeds 0-2, validation) it scored 2.2 [1.0, 3.3] bbox AP below
# AdamW, and the exploration estimated 3.3 [2.3, 4.3] below
# (benchmarks/README.md; not measurable after Holm at five seeds). Until
# that cell has its result, this config keeps the authors' setting.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(
        _delete_=True,
        type='OLORAdamW',
        lr=0.0001,
        betas=(0.9, 0.999),
        weight_decay=0.05),
    paramwise_cfg=dict(
        rollback=dict(
            max=0.01, min=0.0, power=1.0, layer='block', scope=['backbone']),
        norm_decay_mult=0.0))

# Logs each backbone stage's drift from the pre-trained weights and OLOR's
# current kappa every 50 iterations (logger and visualizer; no effect on
# training).
custom_hooks = [dict(type='OLORDriftHook', interval=50)]
