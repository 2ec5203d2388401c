# UPerNet ConvNeXt-B on ADE20K, 160k iterations (AMP), with OLOR-AdamW.
#
# Mirrors mmseg's convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py
# entirely (ImageNet-1k ConvNeXt-B from mmpretrain, AdamW lr 1e-4 / betas
# (0.9, 0.999) / wd 0.05, AmpOptimWrapper with dynamic loss scale, LinearLR
# 1500 iters then PolyLR) and changes only the optimizer type and the
# rollback. It also adds OLORDriftHook, which only logs.
#
# Stage-wise lr decay stays the recipe's: its constructor, mmseg's
# LearningRateDecayOptimizerConstructor, builds the param groups
# (paramwise_cfg.base_constructor; its decay_rate 0.9, decay_type
# 'stage_wise' and num_layers 12 are inherited from the recipe), and OLOR
# writes the rollback into them. Weight decay is the recipe's too: that
# constructor gives 0 to biases and 1-D parameters (norms, layer scales),
# 0.05 to the rest.
#
# OLOR hyper-parameters: r_max 0.01, r_min 0, power 1 are the authors'
# classification setting (OLOR-AAAI-2024); no detection or segmentation
# values were published. Depth: stem 0, then one step per ConvNeXt block
# (3 + 3 + 27 + 3 = 36); it is OLOR's block depth, not the lr-decay stage.
_base_ = ('mmseg::convnext/'
          'convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py')

# mmpretrain.models: the recipe's ConvNeXt backbone.
custom_imports = dict(
    imports=['mmpretrain.models', 'mmolor'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(type='OLORAdamW'),
    paramwise_cfg=dict(
        base_constructor='mmseg.LearningRateDecayOptimizerConstructor',
        rollback=dict(
            max=0.01, min=0.0, power=1.0, layer='block',
            scope=['backbone'])))

# Logs each backbone stage's drift from the pre-trained weights and OLOR's
# current kappa every 50 iterations (logger and visualizer; no effect on
# training).
custom_hooks = [dict(type='OLORDriftHook', interval=50)]
