# Copyright (c) mmolor contributors. All rights reserved.
"""The benchmark's regimes, task families and fine-tuning methods.

- Regimes (:data:`REGIMES`) say which upstream a backbone starts from and
  what the downstream data is;
- tasks (:data:`TASKS`) are one config each under ``configs/demo/``, run by
  the real OpenMMLab runner: ``det`` (mmdet Mask R-CNN, COCO bbox mAP),
  ``seg`` (mmseg UPerNet, mIoU), ``cls`` (mmpretrain ImageClassifier,
  top-1);
- methods (:data:`METHODS`) turn a task's AdamW config into the method's
  config (:func:`method_config`).
"""
import copy
import os.path as osp
from typing import Dict, NamedTuple, Sequence, Tuple

from mmengine.config import Config


__all__ = [
    'Regime', 'REGIMES', 'Task', 'TASKS', 'METHODS', 'task_config',
    'method_config', 'set_iters', 'warmup_iters', 'SCENES', 'has_test_split'
]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALL_DIGITS = tuple(range(10))


class Regime(NamedTuple):
    """Where a fine-tuning starts from, and on what it is fine-tuned."""
    upstream_classes: Tuple[int, ...]
    matched: bool  # upstream pre-trained in the scenes' statistics
    downstream_classes: Tuple[int, ...]
    size: str  # 'few' or 'many' training scenes / images
    description: str


REGIMES = {
    'related-few':
    Regime(
        ALL_DIGITS, True, ALL_DIGITS, 'few',
        'upstream: all ten digits in the downstream statistics (noisy '
        'background, random scale, place and brightness); downstream: the '
        'same digits, few training images'),
    'related-many':
    Regime(
        ALL_DIGITS, True, ALL_DIGITS, 'many',
        'as related-few, with many training images'),
    'shifted':
    Regime(
        ALL_DIGITS, False, ALL_DIGITS, 'few',
        'upstream: all ten digits as clean centred crops (never saw the '
        'downstream statistics); downstream: the same digits, few training '
        'images'),
    'unrelated':
    Regime((0, 1, 2, 3, 4), False, (5, 6, 7, 8, 9), 'few',
           'upstream: the digits 0-4 as clean crops; downstream: the digits '
           '5-9'),
}


class Task(NamedTuple):
    """A task family: its AdamW config and how to read its metric."""
    config: str  # under configs/demo/
    metric: str  # the evaluator's key of the primary metric
    scale: float  # metric * scale is a fraction in [0, 1]
    extra: Dict[str, str]  # other metrics: result key -> evaluator key
    scope: str  # the OpenMMLab codebase, for its MODELS registry
    sizes: Dict[str, Tuple[int, int]]  # size -> (train, val) images


# The det and seg tasks read the same scenes (COCO instances and their
# label maps), so a seed's scenes are written once for both.
SCENES = dict(few=(40, 80), many=(200, 80))
TASKS = {
    'det':
    Task(
        osp.join(REPO_ROOT, 'configs', 'demo',
                 'mask-rcnn_r18-w16_fpn_adamw_900i_digits.py'),
        'coco/bbox_mAP', 1.0, dict(downstream_segm='coco/segm_mAP'),
        'mmdet', SCENES),
    'seg':
    Task(
        osp.join(REPO_ROOT, 'configs', 'demo',
                 'upernet_r18-w16_adamw_300i_digits.py'), 'mIoU', 0.01,
        dict(downstream_acc='aAcc'), 'mmseg', SCENES),
    'cls':
    Task(
        osp.join(REPO_ROOT, 'configs', 'demo',
                 'resnet18-w16_adamw_300i_digit-crops.py'), 'accuracy/top1',
        0.01, {}, 'mmpretrain', dict(few=(50, 500), many=(500, 500))),
}

# method -> the config keys it takes.
METHODS = {
    'adamw': (),
    'l2sp': ('alpha', ),
    'llrd': ('decay', ),
    'olor': ('r_max', 'power'),
    'olor+llrd': ('r_max', 'power', 'decay'),
    'spd': ('lam', ),
    'olor-spd': ('r_max', 'power'),
    'wise-ft': ('alpha', ),
}


def warmup_iters(iters: int) -> int:
    """The warm-up of an ``iters``-iteration schedule: 20 iterations, a
    tenth of ``iters`` when that is shorter, at least 1."""
    return max(1, min(20, iters // 10))


def set_iters(cfg: Config, iters: int) -> None:
    """The benchmark's schedule: ``iters`` iterations, a linear warm-up
    over the first 20 (a tenth of ``iters`` when shorter) from 0.1x the
    lr, then a cosine decay to 0 at ``iters``; validate and save once, at
    the end (validation metrics are logged by iteration)."""
    warmup = warmup_iters(iters)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    # Validation metrics logged at their iteration, not at epoch 0.
    cfg.default_hooks.logger.log_metric_by_epoch = False
    cfg.param_scheduler = [
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=False,
            begin=0,
            end=warmup),
        dict(
            type='CosineAnnealingLR',
            by_epoch=False,
            begin=warmup,
            end=iters,
            T_max=iters - warmup,
            eta_min=0.0)
    ]


# The test split of each task's data (written by the benchmark's data job
# since it has one): the test data loader's options, relative to the data
# root.
TEST_SPLIT = dict(
    det={
        'test_dataloader.dataset.ann_file':
        'annotations/instances_test2017.json',
        'test_dataloader.dataset.data_prefix': dict(img='test2017/'),
    },
    seg={
        'test_dataloader.dataset.data_prefix':
        dict(img_path='test2017', seg_map_path='semantic_test2017'),
    },
    cls={
        'test_dataloader.dataset.ann_file': 'crops/test.txt',
        'test_dataloader.dataset.data_prefix': 'crops/test',
    })
_TEST_FILES = dict(
    det='annotations/instances_test2017.json',
    seg='semantic_test2017',
    cls='crops/test.txt')


def has_test_split(task: str, data_root: str) -> bool:
    """Whether ``data_root`` holds the task's test split (data written
    before the benchmark had one has train and val only)."""
    return osp.exists(osp.join(data_root, _TEST_FILES[task]))


def task_config(task: str, classes: Sequence[int], data_root: str,
                checkpoint: str, work_dir: str, iters: int,
                seed: int) -> Config:
    """The task's AdamW config, pointed at the data, the classes and the
    upstream checkpoint, with the benchmark's schedule (:func:`set_iters`).
    The validation loop reads the val split; the test loop the test split
    where the data has one (:func:`has_test_split`), else val too.
    """
    if task not in TASKS:
        raise ValueError(f'Invalid task: {task!r} (expected one of '
                         f'{tuple(TASKS)})')
    spec = TASKS[task]
    cfg = Config.fromfile(spec.config)
    names = tuple(f'digit_{c}' for c in classes)
    if task == 'seg':
        names = ('background', ) + names
    options = {
        'model.backbone.init_cfg.checkpoint': checkpoint,
        'work_dir': work_dir,
        'randomness.seed': seed,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.dataset.data_root'] = data_root
        options[f'{loader}.dataset.metainfo'] = dict(classes=names)
    test = has_test_split(task, data_root)
    if test:
        # The configs write `test_dataloader = val_dataloader`: a copy of
        # its own first, so the val loader keeps the val split.
        cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
        cfg.test_evaluator = copy.deepcopy(cfg.val_evaluator)
        options.update(TEST_SPLIT[task])
    if task == 'det':
        ann = osp.join(data_root, 'annotations', 'instances_val2017.json')
        options.update({
            'val_evaluator.ann_file': ann,
            'test_evaluator.ann_file':
            osp.join(data_root, TEST_SPLIT['det']
                     ['test_dataloader.dataset.ann_file']) if test else ann,
            'model.roi_head.bbox_head.num_classes': len(names),
            'model.roi_head.mask_head.num_classes': len(names),
        })
    elif task == 'seg':
        options['model.decode_head.num_classes'] = len(names)
        weights = cfg.model.decode_head.loss_decode.get('class_weight')
        if weights is not None:  # the background's, then the digits'
            options['model.decode_head.loss_decode.class_weight'] = \
                weights[:1] + weights[1:2] * (len(names) - 1)
    else:
        options.update({
            'model.head.num_classes': len(names),
            'data_preprocessor.num_classes': len(names),
        })
    cfg.merge_from_dict(options)
    set_iters(cfg, iters)
    return cfg


def _check(method: str, config: Dict) -> None:
    if method not in METHODS:
        raise ValueError(f'Invalid method: {method!r} (expected one of '
                         f'{tuple(METHODS)})')
    if set(config) != set(METHODS[method]):
        raise ValueError(f'{method} takes the settings {METHODS[method]}, '
                         f'got {config}')


def llrd_keys(decay: float,
              blocks: Sequence[int] = (2, 2, 2, 2)) -> Dict[str, Dict]:
    """Stage-wise layer-wise lr decay for an OpenMMLab ResNet (``blocks``
    per stage), as mmengine's ``paramwise_cfg.custom_keys``: ``lr_mult``
    is ``decay`` for the deepest stage, ``decay ** 2`` for the one below,
    ..., ``decay ** (stages + 1)`` for the stem; the neck and heads keep 1.

    A custom key also sets the weight decay (``decay_mult``, default 1)
    instead of ``norm_decay_mult``: the norm layers get keys of their own
    with ``decay_mult=0``, as the other methods' ``norm_decay_mult=0``.

    (mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` handle
    ConvNeXt, BEiT and MAE backbones only, and mmpretrain's needs a
    ``get_layer_depth`` that its ResNet gives for ResNet-50 and deeper.)
    """
    if not 0 < decay <= 1:
        raise ValueError(f'Invalid lr decay: {decay} (expected 0 < decay '
                         '<= 1)')
    stages = len(blocks)
    keys = {}
    for i, count in enumerate(blocks, start=1):
        mult = decay**(stages + 1 - i)
        keys[f'backbone.layer{i}'] = dict(lr_mult=mult)
        for block in range(count):
            for norm in ('bn1', 'bn2', 'downsample.1'):
                keys[f'backbone.layer{i}.{block}.{norm}'] = dict(
                    lr_mult=mult, decay_mult=0.0)
    keys['backbone.conv1'] = dict(lr_mult=decay**(stages + 1))
    keys['backbone.bn1'] = dict(lr_mult=decay**(stages + 1), decay_mult=0.0)
    return keys


def method_config(cfg: Config, task: str, method: str,
                  config: Dict) -> Config:
    """The task config ``cfg`` (AdamW) turned into ``method``'s.

    - ``adamw``: unchanged;
    - ``l2sp``: ``OLORAdamW`` with ``paramwise_cfg.l2sp`` (weight
      ``alpha``) on the backbone, no rollback;
    - ``llrd``: stage-wise lr decay ``decay`` (:func:`llrd_keys`) through
      mmengine's ``DefaultOptimWrapperConstructor``;
    - ``olor``: ``OLOROptimWrapperConstructor`` + ``OLORAdamW`` (the same
      lr, betas and weight decay), rollback ``r_max`` falling to 0 with
      ``power`` per block of the backbone;
    - ``olor+llrd``: both, the lr decay's constructor as OLOR's
      ``base_constructor``;
    - ``spd``: Selective Projection Decay as published (AdamSPD): the
      review ``'spd'`` with one constant strength ``lam`` over the backbone
      (``rollback_follows_lr=False``);
    - ``olor-spd``: OLOR's layer-wise rollback (``r_max``, ``power``,
      following the lr) with the review ``'spd'``.
    - ``wise-ft`` is not trained: it is AdamW's run, interpolated
      (:func:`~benchmarks.benchmark.run_one`).

    Returns:
        Config: A new config.
    """
    _check(method, config)
    if method == 'wise-ft':
        raise ValueError('wise-ft is not trained: it is evaluated on the '
                         'weights of the adamw run')
    cfg = copy.deepcopy(cfg)
    wrapper = cfg.optim_wrapper
    if method != 'adamw' and method != 'llrd':
        wrapper.constructor = 'OLOROptimWrapperConstructor'
        wrapper.optimizer.type = 'OLORAdamW'
    if method == 'l2sp':
        wrapper.paramwise_cfg.l2sp = dict(
            alpha=config['alpha'], scope=['backbone'])
    if method in ('llrd', 'olor+llrd'):
        wrapper.paramwise_cfg.custom_keys = llrd_keys(config['decay'])
    if method == 'olor+llrd':
        wrapper.paramwise_cfg.base_constructor = \
            'DefaultOptimWrapperConstructor'
    if method in ('olor', 'olor+llrd', 'olor-spd'):
        wrapper.paramwise_cfg.rollback = dict(
            max=config['r_max'],
            min=0.0,
            power=config['power'],
            layer='block',
            scope=['backbone'],
            review='spd' if method == 'olor-spd' else 'olor')
    if method == 'spd':
        wrapper.optimizer.rollback_follows_lr = False
        wrapper.paramwise_cfg.rollback = dict(
            max=config['lam'],
            min=config['lam'],
            power=0.0,
            scope=['backbone'],
            review='spd')
    return cfg
