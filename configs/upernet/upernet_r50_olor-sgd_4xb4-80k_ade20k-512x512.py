# UPerNet R-50 on ADE20K, 80k iterations, with OLOR-SGD.
#
# Mirrors mmseg's upernet_r50_4xb4-80k_ade20k-512x512.py (ResNetV1c-50 from
# open-mmlab://resnet50_v1c, SGD lr 0.01 / momentum 0.9 / wd 5e-4, PolyLR,
# batch 16) and changes only the optimizer: OLORSGD with the layer-wise
# rollback on the backbone. It also adds OLORDriftHook, which only logs.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published. Nothing is frozen here, so the deep stem gets
# r_max. With PolyLR the rollback follows the lr down to 1% of r at the end.
# Weight decay is kept: lr * wd = 5e-6 per step, far below the review.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'

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
