# Copyright (c) mmolor contributors. All rights reserved.
"""Every shipped config loads, builds its model and optim wrapper (no
weights downloaded) and rolls back the backbone by depth, not the rest."""
import ast
import copy
import glob
import os.path as osp
import re

import pytest
from mmengine import Config
from mmengine.hub import get_config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from expected_depths import resnet_depth, swin_depth, vit_depth
from reference import rollback_by_depth

ROOT = osp.dirname(osp.dirname(__file__))
# The detection and segmentation configs: thin diffs over mmdet / mmseg
# recipes that change only the optimizer. The classification configs (the
# paper's recipe over mmpretrain models) and the demo's small models have
# tests of their own.
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if '_base_' not in p and not any(
        osp.sep + d + osp.sep in p for d in ('demo', 'classification')))


def _composes(path):
    with open(osp.join(ROOT, path)) as f:
        return 'base_constructor' in f.read()


# Configs over a layer-wise lr-decay recipe (ConvNeXt, BEiT, MAE): OLOR over
# the recipe's constructor (`paramwise_cfg.base_constructor`).
LLRD_CONFIGS = [p for p in CONFIGS if _composes(p)]
DEFAULT_CONFIGS = [p for p in CONFIGS if not _composes(p)]

# Backbone family -> (expected depth of a name, D), from the upstream
# architectures: ResNet-50 has 3+4+6+3 blocks, Swin-T 2+2+6+2.
FAMILIES = {
    'ResNet': (lambda n: resnet_depth(n, [3, 4, 6, 3], 'block'), 16),
    'ResNetV1c': (lambda n: resnet_depth(n, [3, 4, 6, 3], 'block'), 16),
    'SwinTransformer': (lambda n: swin_depth(n, [2, 2, 6, 2], 'block'), 12),
}


# What each config ships (benchmarks/PROTOCOL.md, section 6): the ADE20K
# configs follow seg related-many, SPD as published (one constant strength,
# not following the lr); the COCO configs keep the authors' OLOR until det
# related-many's confirmatory cell has run.
SHIPPED = {
    'mmseg': (dict(max=1.0, min=1.0, power=0.0, scope=['backbone'],
                   review='spd'), dict(rollback_follows_lr=False)),
    'mmdet': (dict(max=0.01, min=0.0, power=1.0, layer='block',
                   scope=['backbone']), {}),
}


def check_shipped_review(cfg):
    """The config's review settings are those its task ships; returns
    them (``rollback`` dict, optimizer keys)."""
    rollback, optimizer = SHIPPED[cfg.default_scope]
    assert _plain(cfg.optim_wrapper.paramwise_cfg.rollback) == rollback
    for key, value in optimizer.items():
        assert cfg.optim_wrapper.optimizer[key] == value, key
    return rollback, optimizer


def expected_rollback(rollback, depth, max_depth):
    """A backbone parameter's rollback at ``depth`` of ``max_depth``."""
    return rollback_by_depth(depth, max_depth, rollback['max'],
                             rollback['min'], rollback['power'])


def build_model(cfg):
    scope = cfg.default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS.build(cfg.model)


def test_configs_are_found():
    assert len(CONFIGS) >= 6, CONFIGS
    assert len(LLRD_CONFIGS) >= 3, LLRD_CONFIGS


@pytest.mark.parametrize('path', DEFAULT_CONFIGS)
def test_config_builds_and_rolls_back_the_backbone_by_depth(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    assert cfg.custom_imports.imports == ['mmolor']
    ow_cfg = cfg.optim_wrapper
    assert ow_cfg.constructor == 'OLOROptimWrapperConstructor'
    assert ow_cfg.optimizer.type in ('OLORAdamW', 'OLORSGD')
    rollback, _ = check_shipped_review(cfg)

    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
    depth_of, max_depth = FAMILIES[cfg.model.backbone.type]
    name_of = {p: n for n, p in model.named_parameters()}
    seen = 0
    for group in optim_wrapper.optimizer.param_groups:
        (p, ) = group['params']
        name = name_of[p]
        if name.startswith('backbone.'):
            want = expected_rollback(rollback, depth_of(name), max_depth)
            assert group['review'] == rollback.get('review', 'olor'), name
            seen += 1
        else:
            want = 0.0  # neck, heads
        assert group['rollback'] == pytest.approx(want, abs=1e-15), name
    assert seen > 0
    # Frozen parameters (mmdet's frozen_stages=1) are not in the optimizer.
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not any(name_of[p] in frozen for g in
                   optim_wrapper.optimizer.param_groups for p in g['params'])


def _plain(obj):
    """Config values without the `_scope_` keys `mmdet::` bases add."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@pytest.mark.parametrize('path', CONFIGS)
def test_config_changes_only_the_optimizer(path):
    """Model, data, schedule and evaluation are the upstream recipe's."""
    cfg = Config.fromfile(osp.join(ROOT, path))
    with open(osp.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    (base, ) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign)
                and node.targets[0].id == '_base_']
    upstream = get_config(base)
    for key in ('model', 'train_dataloader', 'val_dataloader',
                'test_dataloader', 'val_evaluator', 'test_evaluator',
                'train_cfg', 'param_scheduler', 'default_hooks',
                'auto_scale_lr'):
        assert _plain(cfg.get(key)) == _plain(upstream.get(key)), key
    assert cfg.train_dataloader.dataset.data_root.startswith('data/')
    assert 'Pretrained' in str(cfg.model.backbone.get('init_cfg')) or \
        cfg.model.get('pretrained')


def _upstream(path):
    with open(osp.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    (base, ) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign)
                and node.targets[0].id == '_base_']
    return get_config(base)


def _without_amp(optim_wrapper):
    """The same optim wrapper as an OptimWrapper: mmengine's
    AmpOptimWrapper needs a GPU to be built; the groups do not change."""
    cfg = copy.deepcopy(optim_wrapper)
    cfg.type = 'OptimWrapper'
    cfg.pop('loss_scale', None)
    return cfg


def _per_param(optim_wrapper, model, key):
    name_of = {p: n for n, p in model.named_parameters()}
    return {name_of[p]: g[key] for g in optim_wrapper.optimizer.param_groups
            for p in g['params']}


@pytest.mark.parametrize('path', LLRD_CONFIGS)
def test_llrd_config_keeps_the_recipes_lr_decay_and_wrapper(path):
    """OLOR over the recipe's own lr-decay constructor: the recipe's
    wrapper (AMP), optimizer settings and lr-decay keys, every parameter's
    lr and weight decay exactly as the recipe builds them, and a rollback
    that falls with OLOR's block depth."""
    cfg = Config.fromfile(osp.join(ROOT, path))
    upstream = _upstream(path)
    up_imports = upstream.get('custom_imports', {}).get('imports', [])
    up_imports = [up_imports] if isinstance(up_imports, str) else up_imports
    assert cfg.custom_imports.imports == list(up_imports) + ['mmolor']
    ow_cfg, up_cfg = cfg.optim_wrapper, upstream.optim_wrapper
    assert ow_cfg.type == up_cfg.type  # AmpOptimWrapper where upstream has
    assert ow_cfg.get('loss_scale') == up_cfg.get('loss_scale')
    assert ow_cfg.constructor == 'OLOROptimWrapperConstructor'
    shipped, optimizer = check_shipped_review(cfg)
    assert _plain(ow_cfg.optimizer) == dict(
        _plain(up_cfg.optimizer), type='OLORAdamW', **optimizer)
    paramwise = _plain(ow_cfg.paramwise_cfg)
    base = paramwise.pop('base_constructor')
    rollback = paramwise.pop('rollback')
    assert base.split('.')[-1] == up_cfg.constructor
    assert base.split('.')[0] == cfg.default_scope  # the recipe's codebase
    assert paramwise == _plain(up_cfg.paramwise_cfg)
    assert rollback == shipped

    # Size, not meaning: the ViTs at a small image have the same
    # parameters, by name, and the constructor's depth trace is quick.
    if 'img_size' in cfg.model.backbone:
        cfg.model.backbone.img_size = (64, 64)
    model = build_model(cfg)
    ours = build_optim_wrapper(model, _without_amp(ow_cfg))
    theirs = build_optim_wrapper(model, _without_amp(up_cfg))
    for key in ('lr', 'weight_decay'):
        got, want = (_per_param(ow, model, key) for ow in (ours, theirs))
        assert got == want, key
    assert len(set(_per_param(theirs, model, 'lr').values())) > 3

    got = _per_param(ours, model, 'rollback')
    reviews = _per_param(ours, model, 'review')
    for name, value in got.items():
        if not name.startswith('backbone.'):
            assert value == 0.0, name  # neck, heads
        else:
            assert reviews[name] == shipped.get('review', 'olor'), name
    backbone = cfg.model.backbone.type
    if shipped['power'] == 0.0:
        # SPD as published: one strength over the whole backbone.
        assert {v for n, v in got.items() if n.startswith('backbone.')} \
            == {shipped['max']}
    elif backbone in ('BEiT', 'MAE'):
        for name, value in got.items():
            if name.startswith('backbone.'):
                want = expected_rollback(shipped,
                                         vit_depth(name, 12, 'block'), 12)
                assert value == pytest.approx(want, abs=1e-15), name
    else:
        # ConvNeXt: the stem rolls back most; then every block less than
        # the one before it (block depth, not the lr-decay layer ids), the
        # last one not at all.
        assert backbone == 'mmpretrain.ConvNeXt'
        blocks = {}
        for name, value in got.items():
            m = re.match(r'backbone\.stages\.(\d+)\.(\d+)\.', name)
            if m:
                blocks.setdefault((int(m[1]), int(m[2])), set()).add(value)
        assert all(len(v) == 1 for v in blocks.values())
        order = [v.pop() for _, v in sorted(blocks.items())]
        assert len(order) == sum(model.backbone.depths)
        assert all(a > b for a, b in zip(order, order[1:])), order
        assert order[-1] == 0.0
        assert got['backbone.downsample_layers.0.0.weight'] == shipped['max']


def header_overrides(path):
    """The ``--cfg-options`` a config's header gives (the comment lines
    from the one that names it to the first that is not an option)."""
    with open(osp.join(ROOT, path)) as f:
        comments = [line[1:].strip() for line in f if line.startswith('#')]
    words = ' '.join(comments).split()
    options = []
    for word in words[words.index('--cfg-options') + 1:]:
        if not re.fullmatch(r'[\w.]+=[\w.]+', word):
            break
        options.append(word)
    return options


# Builds each full-size segmentor (BEiT-B at 640 px: ~30 s) once more, as
# the other tests here do: in the slow lane, with the census.
@pytest.mark.slow
@pytest.mark.parametrize(
    'path', [p for p in CONFIGS if 'ade20k' in p], ids=osp.basename)
def test_ade20k_header_overrides_give_olor_with_spds_review(path):
    """The header's overrides turn SPD into the cell's OLOR with SPD's
    review (r_max 1, power 1, per block, following the lr), and with
    review=olor and max=0.001 into its OLOR; the optimizer builds."""
    import argparse

    from mmolor.utils.cli import add_cfg_options
    cfg = Config.fromfile(osp.join(ROOT, path))
    options = header_overrides(path)
    assert len(options) == 3, options
    parser = argparse.ArgumentParser()
    add_cfg_options(parser)  # as the tools parse them
    cfg.merge_from_dict(
        parser.parse_args(['--cfg-options', *options]).cfg_options)
    assert cfg.optim_wrapper.optimizer.rollback_follows_lr is True
    assert dict(cfg.optim_wrapper.paramwise_cfg.rollback) == dict(
        max=1.0, min=0.0, power=1.0, scope=['backbone'], review='spd')
    cfg.optim_wrapper.paramwise_cfg.rollback.update(review='olor', max=0.001)
    model = build_model(cfg)
    optimizer = build_optim_wrapper(model, _without_amp(
        cfg.optim_wrapper)).optimizer
    backbone = [g for g in optimizer.param_groups if g['rollback'] > 0]
    assert backbone and {g['review'] for g in backbone} == {'olor'}
    assert max(g['rollback'] for g in backbone) == 0.001
