# UPerNet MAE ViT-B on ADE20K, 160k iterations, with OLOR-AdamW.
#
# Mirrors mmseg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py entirely
# (ViT-B pre-trained by MAE, loaded from
# ./pretrain/mae_pretrain_vit_base_mmcls.pth as upstream; AdamW lr 1e-4 /
# betas (0.9, 0.999) / wd 0.05, LinearLR 1500 iters then PolyLR) and
# changes only the optimizer type and the rollback. It also adds
# OLORDriftHook, which only logs. The recipe's wrapper is OptimWrapper: its
# `fp16 = dict(loss_scale='dynamic')` is an mmseg 0.x key that mmseg 1.x
# does not read; it is inherited unchanged (add `--amp` to train.py for
# AmpOptimWrapper).
#
# Layer-wise lr decay stays the recipe's: its constructor, mmseg's
# LayerDecayOptimizerConstructor, builds the param groups
# (paramwise_cfg.base_constructor; its num_layers 12 and layer_decay_rate
# 0.65 are inherited from the recipe), and OLOR writes the rollback into
# them. Weight decay is the recipe's too: that constructor gives 0 to
# biases and 1-D parameters (norms, the class token, gammas), 0.05 to the
# rest.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published. Depth: patch embedding and class token 0, the 12
# transformer layers 1..12.
_base_ = 'mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(type='OLORAdamW'),
    paramwise_cfg=dict(
        base_constructor='mmseg.LayerDecayOptimizerConstructor',
        rollback=dict(
            max=0.01, min=0.0, power=1.0, layer='block',
            scope=['backbone'])))

# Logs each backbone stage's drift from the pre-trained weights and OLOR's
# current kappa every 50 iterations (logger and visualizer; no effect on
# training).
custom_hooks = [dict(type='OLORDriftHook', interval=50)]
