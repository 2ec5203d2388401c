# Copyright (c) mmolor contributors. All rights reserved.
"""The classification configs (configs/classification/): the paper's
recipe over mmpretrain models, with SPD's review (the forgetting
benchmark's choice for a related upstream and few images). Each builds its
model (no weights downloaded) and OLOR optim wrapper under mmpretrain's
scope, with every parameter's lr and weight decay as the recipe's own
constructor gives them and the review on the backbone only; one trains through tools/train.py at
tiny size, resumes bit for bit and is tested by tools/test.py."""
import ast
import copy
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmolor  # noqa: F401  OLOR's optimizers and constructor
from test_upstream_retention import write_folder_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(osp.join(ROOT, 'configs', 'classification', '*.py')))


def recipe_of(path):
    """The mmpretrain recipe a config inherits, through the configs of
    this folder it names as its ``_base_``; of a config made of component
    bases, the recipe's schedule (its ``paramwise_cfg``)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    (base, ) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign)
                and node.targets[0].id == '_base_']
    if isinstance(base, list):
        (base, ) = [b for b in base if '::_base_/schedules/' in b]
    if base.startswith('./'):
        return recipe_of(osp.join(osp.dirname(path), base))
    assert base.startswith('mmpretrain::')
    return base


def without_amp(optim_wrapper):
    """The same optim wrapper as an OptimWrapper: AmpOptimWrapper needs a
    GPU to be built; the param groups do not change."""
    cfg = copy.deepcopy(optim_wrapper)
    cfg.type = 'OptimWrapper'
    return cfg


def per_param(optim_wrapper, model, key):
    name_of = {p: n for n, p in model.named_parameters()}
    return {name_of[p]: g[key] for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


def test_configs_are_found():
    names = [osp.basename(p) for p in CONFIGS]
    assert any(n.startswith('vit-base-p16') and 'cifar100' in n
               for n in names), names
    assert any(n.startswith('convnext-base') and 'cifar100' in n
               for n in names), names
    assert any('cub' in n or 'stanford' in n for n in names), names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_with_the_recipes_groups_and_rolls_back_the_backbone(
        path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports == dict(
        imports=['mmolor'], allow_failed_imports=False)
    ow_cfg = cfg.optim_wrapper
    assert ow_cfg.type == 'AmpOptimWrapper'
    assert ow_cfg.constructor == 'OLOROptimWrapperConstructor'
    assert ow_cfg.clip_grad is None
    optimizer = dict(ow_cfg.optimizer)
    assert optimizer == dict(type='OLORAdamW', lr=1e-4, betas=(0.9, 0.999),
                             eps=1e-8, weight_decay=0.0,
                             rollback_follows_lr=False)
    # SPD as published (AdamSPD): one constant strength, the review 'spd'.
    rollback = ow_cfg.paramwise_cfg.rollback
    assert dict(rollback) == dict(max=1.0, min=1.0, power=0.0,
                                  scope=['backbone'], review='spd')
    assert cfg.train_cfg.max_epochs == 50
    assert cfg.train_dataloader.batch_size * 8 == \
        cfg.auto_scale_lr.base_batch_size == 128
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == \
        ('LinearLR', 0.01, 5)
    assert (cosine.type, cosine.eta_min, cosine.begin, cosine.end) == \
        ('CosineAnnealingLR', 0.0, 5, 50)
    assert warmup.convert_to_iter_based and cosine.convert_to_iter_based
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    assert cfg.model.backbone.init_cfg.checkpoint.startswith(
        'https://download.openmmlab.com/mmclassification/')
    assert cfg.model.head.loss.type == 'CrossEntropyLoss'
    classes = 200 if '_cub-' in path else 100
    assert cfg.model.head.num_classes == classes
    assert cfg.data_preprocessor.num_classes == classes
    datasets = {cfg[f'{s}_dataloader'].dataset.type
                for s in ('train', 'val', 'test')}
    assert datasets == {'CUB' if classes == 200 else 'CIFAR100'}
    assert cfg.model.get('train_cfg') is None  # no Mixup / CutMix

    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    recipe = get_config(recipe_of(path)).optim_wrapper
    # The recipe's own groups (mmengine's constructor, its paramwise_cfg)
    # with the same optimizer settings; and both with a weight decay, so
    # that the recipe's decay multipliers show.
    for weight_decay in (0.0, 0.05):
        ours = copy.deepcopy(without_amp(ow_cfg))
        ours.optimizer.weight_decay = weight_decay
        theirs = dict(
            type='OptimWrapper',
            optimizer=dict({k: v for k, v in optimizer.items()
                            if k != 'rollback_follows_lr'},
                           type='AdamW', weight_decay=weight_decay),
            paramwise_cfg=recipe.get('paramwise_cfg'))
        ours = build_optim_wrapper(model, ours)
        theirs = build_optim_wrapper(model, theirs)
        for key in ('lr', 'weight_decay'):
            got, want = (per_param(ow, model, key) for ow in (ours, theirs))
            assert got == want, key
    assert set(per_param(theirs, model, 'weight_decay').values()) == {
        0.0, 0.05}

    rollbacks = per_param(ours, model, 'rollback')
    assert set(rollbacks) == {n for n, _ in model.named_parameters()}
    for name, value in rollbacks.items():
        if not name.startswith('backbone.'):
            assert value == 0.0, name  # the new head
    backbone = [v for n, v in rollbacks.items() if n.startswith('backbone.')]
    assert backbone and set(backbone) == {1.0}
    reviews = per_param(ours, model, 'review')
    assert {reviews[n] for n in rollbacks if n.startswith('backbone.')} == \
        {'spd'}


def run(args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    return out.stdout + out.stderr


def tiny_config(tmp_path, data_root):
    """The ViT-B/16 CIFAR-100 config at tiny size: a 2-layer ViT on 32 px
    images, the generated folder dataset (3 classes x 2 images, batch 3: 2
    iterations per epoch), no pretrained weights, no random augmentation,
    OptimWrapper (AmpOptimWrapper needs a GPU). Optimizer, rollback,
    schedule and hooks stay."""
    base = [p for p in CONFIGS
            if osp.basename(p).startswith('vit-base-p16')
            and 'cifar100' in p][0]
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=32),
        dict(type='PackInputs')
    ]
    loader = dict(
        batch_size=3,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            _delete_=True,
            type='CustomDataset',
            data_root=data_root,
            pipeline=pipeline))
    body = f'''
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=32, num_layers=2,
                  num_heads=2, feedforward_channels=64),
        img_size=32, patch_size=8, init_cfg=None),
    head=dict(num_classes=3, in_channels=32))
data_preprocessor = dict(num_classes=3)
train_dataloader = {loader!r}
val_dataloader = {loader!r}
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper')
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
'''
    path = tmp_path / 'tiny.py'
    path.write_text(f'_base_ = {base!r}\n{body}')
    return str(path)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.mark.slow
def test_tiny_training_resumes_bit_for_bit_and_tests(tmp_path):
    data = write_folder_dataset(str(tmp_path / 'data'), per_class=2)
    config = tiny_config(tmp_path, data)
    full, part = tmp_path / 'full', tmp_path / 'part'
    log = run(['tools/train.py', config, '--work-dir', str(full),
               '--cfg-options', 'train_cfg.max_epochs=2'])
    assert 'OLOR rollback:' in log and 'Epoch(train) [2][2/2]' in log
    run(['tools/train.py', config, '--work-dir', str(part), '--cfg-options',
         'train_cfg.max_epochs=1'])
    log = run(['tools/train.py', config, '--work-dir', str(part), '--resume',
               '--cfg-options', 'train_cfg.max_epochs=2'])
    assert 'resumed' in log.lower()

    a, b = load(str(full / 'epoch_2.pth')), load(str(part / 'epoch_2.pth'))
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    assert a['optimizer']['param_groups'] == b['optimizer']['param_groups']
    anchors = 0
    for index, state in a['optimizer']['state'].items():
        other = b['optimizer']['state'][index]
        assert state.keys() == other.keys()
        for key, value in state.items():
            assert torch.equal(value, other[key]), key
        anchors += 'anchor' in state
    backbone = [k for k in a['state_dict'] if k.startswith('backbone.')]
    assert 0 < anchors <= len(backbone), (anchors, len(backbone))
    assert a['param_schedulers'] == b['param_schedulers']

    # tools/test.py on the final weights: the top-1 that training's last
    # validation (same weights, same images) logged.
    test_dir = tmp_path / 'test'
    log = run(['tools/test.py', config, str(full / 'epoch_2.pth'),
               '--work-dir', str(test_dir)])
    assert 'accuracy/top1' in log
    (path, ) = glob.glob(str(test_dir / '*' / '*.json'))
    with open(path) as f:
        top1 = json.load(f)['accuracy/top1']
    (scalars, ) = glob.glob(str(full / '*' / 'vis_data' / 'scalars.json'))
    with open(scalars) as f:
        val = [json.loads(line) for line in f if 'accuracy/top1' in line]
    assert val[-1]['step'] == 2  # the epoch
    assert top1 == val[-1]['accuracy/top1']
    assert 0.0 <= top1 <= 100.0
