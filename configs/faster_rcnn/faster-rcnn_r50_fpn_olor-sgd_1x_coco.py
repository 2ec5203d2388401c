# Faster R-CNN R-50-FPN 1x on COCO, fine-tuned with OLOR-SGD.
#
# Mirrors mmdet's faster-rcnn_r50_fpn_1x_coco.py (SGD lr 0.02, momentum 0.9,
# weight decay 1e-4, 12 epochs, batch 16) and changes only the optimizer:
# OLORSGD with the layer-wise rollback on the backbone. It also adds
# OLORDriftHook, which only logs.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024, config.py / train.py); the authors
# published no detection or segmentation values. The backbone's stem and
# layer1 stay frozen (frozen_stages=1, as upstream), so they keep their
# pre-trained weights exactly and the strongest rollback that applies is
# that of layer2.0 (depth 4 of 16: r = 0.0075). The weight decay is kept:
# per step it moves a weight by lr * wd (<= 2e-6 of it), far less than the
# review (up to 1%), and the neck and heads train as in the baseline.
#
# Not the benchmark's choice yet: the detection cell these configs follow
# (COCO-like, many training images: benchmarks/PROTOCOL.md, det
# related-many) has its settings chosen and its confirmatory runs under way.
# What is known of r_max 0.01 there is an estimate, not a test: in its
# tuning runs (seeds 0-2, validation) it scored 2.2 [1.0, 3.3] bbox AP below
# AdamW, and the exploration estimated 3.3 [2.3, 4.3] below
# (benchmarks/README.md; not measurable after Holm at five seeds). Until
# that cell has its result, this config keeps the authors' setting.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(type='OLORSGD'),
    paramwise_cfg=dict(
        rollback=dict(
            max=0.01, min=0.0, power=1.0, layer='block',
            scope=['backbone'])))

# Logs each backbone stage's drift from the pre-trained weights and OLOR's
# current kappa every 50 iterations (logger and visualizer; no effect on
# training).
custom_hooks = [dict(type='OLORDriftHook', interval=50)]
