# Mask R-CNN Swin-T 1x on COCO (instance segmentation), with OLOR-AdamW.
#
# Mirrors mmdet's mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py entirely (ImageNet
# Swin-T weights, AdamW lr 1e-4 / wd 0.05 with no decay on position tables
# and norms, LinearLR 1000 iters + steps at epochs 8 and 11) and changes
# only the optimizer type and the rollback. It also adds OLORDriftHook,
# which only logs.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published. Depth for Swin-T: patch embedding 0, the 12
# transformer blocks 1..12 (stage downsamples and output norms follow their
# stage's last block).
#
# Not the benchmark's choice yet: the detection cell these configs follow
# (COCO-like, many training images: benchmarks/PROTOCOL.md, det
# related-many) has its settings chosen and its confirmatory runs under way.
# What is known of r_max 0.01 there is an estimate, not a test: in its
# tuning runs (seeds 0-2, validation) it scored 2.2 [1.0, 3.3] bbox AP below
# AdamW, and the exploration estimated 3.3 [2.3, 4.3] below
# (benchmarks/README.md; not measurable after Holm at five seeds). Until
# that cell has its result, this config keeps the authors' setting.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(type='OLORAdamW'),
    paramwise_cfg=dict(
        rollback=dict(
            max=0.01, min=0.0, power=1.0, layer='block',
            scope=['backbone'])))

# Logs each backbone stage's drift from the pre-trained weights and OLOR's
# current kappa every 50 iterations (logger and visualizer; no effect on
# training).
custom_hooks = [dict(type='OLORDriftHook', interval=50)]
