# Image classification for the forgetting benchmark: an mmpretrain
# ImageClassifier on the demo's ResNet-18 at a quarter width (stages of
# 16-128 channels), fine-tuned with AdamW on 32x32 crops of handwritten
# digits drawn in the scenes' statistics (noisy background, random scale,
# place and brightness). The backbone loads the upstream checkpoint; the
# linear head starts from scratch.
#
# The paths, the classes and the number of iterations are placeholders: the
# benchmark (benchmarks/tasks.py) passes its own.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

data_root = 'data/digit_scenes/'
upstream_checkpoint = ('work_dirs/demo/upstream/'
                       'upstream_r18-w16_digits-0-1-2-3-4_seed0.pth')
classes = ('digit_5', 'digit_6', 'digit_7', 'digit_8', 'digit_9')
max_iters = 300

data_preprocessor = dict(
    num_classes=len(classes),
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        out_indices=(3, ),
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(
            type='Pretrained',
            checkpoint=upstream_checkpoint,
            prefix='backbone.')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=len(classes),
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )))

# No flip: a mirrored digit is not a digit.
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        ann_file='crops/train.txt',
        data_prefix='crops/train',
        metainfo=dict(classes=classes),
        pipeline=pipeline))
val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CustomDataset',
        data_root=data_root,
        ann_file='crops/val.txt',
        data_prefix='crops/val',
        metainfo=dict(classes=classes),
        pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0))
# Linear warm-up, then cosine to 0 at the last iteration.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=20,
        end=max_iters,
        T_max=max_iters - 20,
        eta_min=0.0)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=max_iters,
        max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
