# Copyright (c) mmolor contributors. All rights reserved.
"""Every shipped config loads, builds its model and optim wrapper (no
weights downloaded) and rolls back the backbone by depth, not the rest."""
import ast
import glob
import os.path as osp

import pytest
from mmengine import Config
from mmengine.hub import get_config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from expected_depths import resnet_depth, swin_depth
from reference import rollback_by_depth

ROOT = osp.dirname(osp.dirname(__file__))
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if '_base_' not in p and osp.sep + 'demo' + osp.sep not in p)

# Backbone family -> (expected depth of a name, D), from the upstream
# architectures: ResNet-50 has 3+4+6+3 blocks, Swin-T 2+2+6+2.
FAMILIES = {
    'ResNet': (lambda n: resnet_depth(n, [3, 4, 6, 3], 'block'), 16),
    'ResNetV1c': (lambda n: resnet_depth(n, [3, 4, 6, 3], 'block'), 16),
    'SwinTransformer': (lambda n: swin_depth(n, [2, 2, 6, 2], 'block'), 12),
}


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


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_rolls_back_the_backbone_by_depth(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    assert cfg.custom_imports.imports == ['mmolor']
    ow_cfg = cfg.optim_wrapper
    assert ow_cfg.constructor == 'OLOROptimWrapperConstructor'
    assert ow_cfg.optimizer.type in ('OLORAdamW', 'OLORSGD')
    rollback = ow_cfg.paramwise_cfg.rollback
    assert (rollback.max, rollback.min, rollback.power) == (0.01, 0.0, 1.0)

    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
    depth_of, max_depth = FAMILIES[cfg.model.backbone.type]
    name_of = {p: n for n, p in model.named_parameters()}
    seen = 0
    for group in optim_wrapper.optimizer.param_groups:
        (p, ) = group['params']
        name = name_of[p]
        if name.startswith('backbone.'):
            want = rollback_by_depth(depth_of(name), max_depth, 0.01, 0.0,
                                     1.0)
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
