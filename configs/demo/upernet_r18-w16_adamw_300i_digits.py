# Semantic segmentation for the forgetting benchmark: a small UPerNet on the
# demo's ResNet-18 at a quarter width (stages of 16-128 channels), fine-tuned
# with AdamW on the label maps of the digit scenes (128x128; 0 = background,
# i + 1 = the scene's digit class i). The backbone loads the upstream
# checkpoint; the UPerNet head (32 channels) starts from scratch.
#
# The paths, the classes and the number of iterations are placeholders: the
# benchmark (benchmarks/tasks.py) passes its own. mIoU is mmseg's IoUMetric
# over all classes, background included.
_base_ = 'mmseg::_base_/default_runtime.py'

custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)

data_root = 'data/digit_scenes/'
upstream_checkpoint = ('work_dirs/demo/upstream/'
                       'upstream_r18-w16_digits-0-1-2-3-4_seed0.pth')
classes = ('background', 'digit_5', 'digit_6', 'digit_7', 'digit_8',
           'digit_9')
max_iters = 300

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(128, 128)),
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 2),
        dilations=(1, 1, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(
            type='Pretrained',
            checkpoint=upstream_checkpoint,
            prefix='backbone.')),
    decode_head=dict(
        type='UPerHead',
        in_channels=[16, 32, 64, 128],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=32,
        dropout_ratio=0.0,
        num_classes=len(classes),
        # GroupNorm: on the pyramid pooling's 1x1 maps BatchNorm would see
        # only as many values per channel as the batch has images (4).
        norm_cfg=dict(type='GN', num_groups=8, requires_grad=True),
        align_corners=False,
        # The background covers ~92% of the pixels: unweighted, the head
        # predicts nothing else for hundreds of iterations.
        loss_decode=dict(
            type='CrossEntropyLoss',
            use_sigmoid=False,
            loss_weight=1.0,
            class_weight=[0.1] + [1.0] * (len(classes) - 1))),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# No flip: a mirrored digit is not a digit.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
test_pipeline = train_pipeline
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes),
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=False,
    pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        dataset,
        data_prefix=dict(
            img_path='train2017', seg_map_path='semantic_train2017')))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        dataset,
        data_prefix=dict(img_path='val2017', seg_map_path='semantic_val2017')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
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
