# The demo's baseline: the same run with plain AdamW (full fine-tuning, no
# rollback); everything else is the OLOR config's.
_base_ = './mask-rcnn_r18-w16_fpn_olor-adamw_900i_digits.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0))
