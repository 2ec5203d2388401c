# UPerNet Swin-T on ADE20K, 160k iterations, with OLOR-AdamW.
#
# Mirrors mmseg's
# swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py
# entirely (ImageNet-1k Swin-T, AdamW lr 6e-5 / wd 0.01 with no decay on
# position tables and norms, LinearLR 1500 iters then PolyLR) and changes
# only the optimizer type and the rollback. It also adds OLORDriftHook,
# which only logs.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published.
_base_ = ('mmseg::swin/'
          'swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py')

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
