# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR over any constructor: `paramwise_cfg['base_constructor']`.

For each base constructor (mmseg's LayerDecay and LearningRateDecay, mmdet's
LearningRateDecay, mmpretrain's lr-decay constructor, a user's own) the
groups are built twice on a real backbone: by the base constructor alone and
by OLOR over it. Every parameter must get exactly the same lr, weight decay
and other group settings, and the rollback that OLOR gives it over mmengine's
default constructor (the depth rule does not depend on the grouping); for
BEiT the rollback is also checked against the architecture's depth.
"""
import ast
import copy
import functools
import io
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from expected_depths import vit_depth
from reference import rollback_by_depth
from test_constructor import det_model, seg_model

import mmolor.optim.constructor

ROLLBACK = dict(max=0.02, min=0.004, power=2.0)
# Group keys OLOR's optimizers add (their defaults) or OLOR sets.
OLOR_GROUP_KEYS = {'rollback', 'rollback_follows_lr', 'anchor_dtype',
                   'review', 'l2sp', 'compiled'}


# ---------------------------------------------------------------- models


def beit_seg(num_layers=3):
    """mmseg UPerNet with a small BEiT (patch 8 on 32x32: 16 tokens)."""
    return seg_model(
        dict(type='BEiT', img_size=(32, 32), patch_size=8, embed_dims=16,
             num_layers=num_layers, num_heads=2, mlp_ratio=2,
             out_indices=(0, 1, 2), final_norm=True, init_cfg=None),
        [16, 16, 16, 16])


def convnext(**kwargs):
    """mmpretrain's ConvNeXt, as the mmdet/mmseg recipes use it, small."""
    return dict(type='mmpretrain.ConvNeXt',
                arch=dict(depths=[1, 1, 2, 1], channels=[8, 16, 32, 64]),
                out_indices=[0, 1, 2, 3], drop_path_rate=0.0,
                layer_scale_init_value=1.0, gap_before_final_norm=False,
                init_cfg=None, **kwargs)


def convnext_seg():
    return seg_model(convnext(), [8, 16, 32, 64])


def convnext_det():
    return det_model(convnext(_neck_in=[8, 16, 32, 64]))


def vit_cls():
    """An mmpretrain ImageClassifier (its lr-decay constructor asks the
    model for `get_layer_depth`)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(_VIT_CLS)


_VIT_CLS = dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer',
                      arch=dict(embed_dims=16, num_layers=3, num_heads=2,
                                feedforward_channels=32),
                      img_size=32, patch_size=8, init_cfg=None),
        head=dict(type='VisionTransformerClsHead', num_classes=3,
                  in_channels=16))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class HeadLrTestConstructor(DefaultOptimWrapperConstructor):
    """A user's constructor with keys of its own."""

    def add_params(self, params, module, **kwargs):
        head_lr_mult = self.paramwise_cfg['head_lr_mult']
        backbone_decay_mult = self.paramwise_cfg.get('backbone_decay_mult',
                                                     1.0)
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith('backbone.'):
                params.append(dict(params=[p], weight_decay=self.base_wd *
                                   backbone_decay_mult))
            else:
                params.append(dict(params=[p], lr=self.base_lr * head_lr_mult))


# (id, model builder, base constructor, its paramwise_cfg)
BASES = [
    ('mmseg-LayerDecay-BEiT', beit_seg,
     'mmseg.LayerDecayOptimizerConstructor',
     dict(num_layers=3, layer_decay_rate=0.9)),
    ('mmseg-LearningRateDecay-BEiT', beit_seg,
     'mmseg.LearningRateDecayOptimizerConstructor',
     dict(num_layers=3, decay_rate=0.8, decay_type='layer_wise_vit')),
    ('mmseg-LearningRateDecay-ConvNeXt-stage_wise', convnext_seg,
     'mmseg.LearningRateDecayOptimizerConstructor',
     dict(num_layers=12, decay_rate=0.9, decay_type='stage_wise')),
    ('mmdet-LearningRateDecay-ConvNeXt-layer_wise', convnext_det,
     'mmdet.LearningRateDecayOptimizerConstructor',
     dict(num_layers=6, decay_rate=0.95, decay_type='layer_wise')),
    ('mmpretrain-LearningRateDecay-ViT', vit_cls,
     'LearningRateDecayOptimWrapperConstructor',  # only mmpretrain has it
     dict(layer_decay_rate=0.75, norm_decay_mult=0.0, flat_decay_mult=0.0,
          custom_keys={'.cls_token': dict(decay_mult=0.0),
                       '.pos_embed': dict(decay_mult=0.0)})),
    ('user-constructor', beit_seg, 'HeadLrTestConstructor',
     dict(head_lr_mult=10.0, backbone_decay_mult=0.5)),
]

OPTIMIZER = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)


def build(model, constructor, paramwise, optimizer='AdamW', **wrapper):
    cfg = dict(constructor=constructor,
               optimizer=dict(OPTIMIZER, type=optimizer),
               paramwise_cfg=copy.deepcopy(paramwise), **wrapper)
    return build_optim_wrapper(model, cfg)


def olor(model, base, paramwise, rollback=ROLLBACK, **wrapper):
    paramwise = dict(paramwise, rollback=rollback)
    if base is not None:
        paramwise['base_constructor'] = base
    return build(model, 'OLOROptimWrapperConstructor', paramwise,
                 'OLORAdamW', **wrapper)


def settings_by_param(optim_wrapper, model):
    """name -> the settings of its group (lists of names left out)."""
    name_of = {p: n for n, p in model.named_parameters()}
    out = {}
    for group in optim_wrapper.optimizer.param_groups:
        for i, p in enumerate(group['params']):
            name = name_of[p]
            assert name not in out, f'{name} is in two groups'
            if 'param_names' in group:  # split with the params
                assert group['param_names'][i] == name
            out[name] = {k: v for k, v in group.items()
                         if k not in ('params', 'param_names')}
    return out


# ------------------------------------------------------- the composition


@pytest.mark.parametrize('model_fn,base,paramwise',
                         [b[1:] for b in BASES], ids=[b[0] for b in BASES])
def test_groups_are_the_base_constructors_with_rollback(
        model_fn, base, paramwise):
    model = model_fn()
    # mmengine finds an unscoped name only in the current scope; OLOR
    # also looks in the codebases' registries.
    scoped = {'LearningRateDecayOptimWrapperConstructor':
              'mmpretrain.LearningRateDecayOptimWrapperConstructor'}
    alone = settings_by_param(build(model, scoped.get(base, base),
                                    paramwise), model)
    composed = settings_by_param(olor(model, base, paramwise), model)
    assert sorted(alone) == sorted(composed)  # the same parameters
    for name, want in alone.items():
        got = {k: v for k, v in composed[name].items()
               if k not in OLOR_GROUP_KEYS}
        assert got == want, name  # lr, weight_decay, lr_scale, ... exactly
    # The lr decay really is there, not only the default constructor's.
    assert len({s['lr'] for s in alone.values()}) > 1 or \
        len({s['weight_decay'] for s in alone.values()}) > 1

    # Rollback: the same as OLOR over mmengine's default constructor.
    plain = settings_by_param(olor(model, None, {}), model)
    for name, settings in composed.items():
        assert settings['rollback'] == plain[name]['rollback'], name
        if not name.startswith('backbone.'):
            assert settings['rollback'] == 0.0, name
    backbone = [composed[n]['rollback'] for n in composed
                if n.startswith('backbone.')]
    assert max(backbone) == ROLLBACK['max']
    assert min(backbone) == pytest.approx(ROLLBACK['min'])


def test_beit_layer_decay_rollback_follows_the_architectures_depth():
    model = beit_seg()
    ow = olor(model, 'mmseg.LayerDecayOptimizerConstructor',
              dict(num_layers=3, layer_decay_rate=0.9))
    got = settings_by_param(ow, model)
    for name, settings in got.items():
        want = rollback_by_depth(vit_depth(name, 3, 'block'), 3,
                                 ROLLBACK['max'], ROLLBACK['min'],
                                 ROLLBACK['power']) \
            if name.startswith('backbone.') else 0.0
        assert settings['rollback'] == pytest.approx(want, rel=1e-12,
                                                     abs=0), name
    # mmseg's layer ids: patch embedding 0, layer i -> i + 1, the rest
    # num_layers + 1; lr = 0.9 ** (num_layers + 1 - id) * lr.
    assert got['backbone.layers.0.ffn.layers.1.weight']['lr'] == \
        pytest.approx(1e-3 * 0.9**3)
    assert got['backbone.patch_embed.projection.weight']['lr'] == \
        pytest.approx(1e-3 * 0.9**4)
    assert got['backbone.layers.0.ffn.layers.1.bias']['weight_decay'] == 0


def test_a_group_of_many_depths_is_split_with_its_param_names():
    """mmseg's LearningRateDecay puts a whole layer id into one group
    (ConvNeXt stage_wise: all of a stage); OLOR splits it by rollback and
    each part keeps the group's settings and its own names."""
    model = convnext_seg()
    paramwise = dict(num_layers=12, decay_rate=0.9, decay_type='stage_wise')
    base = 'mmseg.LearningRateDecayOptimizerConstructor'
    alone = build(model, base, paramwise).optimizer.param_groups
    groups = olor(model, base, paramwise).optimizer.param_groups
    assert len(groups) > len(alone)
    by_name = {}
    for g in groups:
        assert len(g['param_names']) == len(g['params'])
        by_name.setdefault(g['group_name'], []).append(g)
    for g in alone:
        parts = by_name[g['group_name']]
        assert sum(len(p['params']) for p in parts) == len(g['params'])
        assert len({p['rollback'] for p in parts}) == len(parts)
        for part in parts:
            assert (part['lr'], part['weight_decay'], part['lr_scale']) == \
                (g['lr'], g['weight_decay'], g['lr_scale'])


def test_keys_the_chain_does_not_read_are_an_error_naming_them():
    """The issue's case: a BEiT recipe's layer-decay keys with OLOR's
    constructor and no base_constructor were silently dropped."""
    model = beit_seg()
    with pytest.raises(ValueError, match=(
            r"paramwise_cfg key\(s\) \['num_layers', 'layer_decay_rate'\] "
            r'are read by no constructor in the chain '
            r'OLOROptimWrapperConstructor -> DefaultOptimWrapperConstructor')):
        olor(model, None, dict(num_layers=3, layer_decay_rate=0.9))
    # mmseg's lr-decay constructor reads no custom_keys (upstream ignores
    # them silently): named too, with that constructor.
    with pytest.raises(ValueError, match=(
            r"\['norm_decay_mult', 'custom_keys'\] .* -> "
            r'LayerDecayOptimizerConstructor')):
        olor(model, 'mmseg.LayerDecayOptimizerConstructor',
             dict(num_layers=3, layer_decay_rate=0.9, norm_decay_mult=0.0,
                  custom_keys={'head': dict(lr_mult=0.1)}))
    # Without rollback too: OLOR's constructor never drops a key.
    with pytest.raises(ValueError, match=r"\['num_layers'\]"):
        build(model, 'OLOROptimWrapperConstructor', dict(num_layers=3))


# (id, model builder, known base constructor, its paramwise_cfg, a key it
# does not read)
UNREAD = [
    ('mmengine-Default', beit_seg, 'DefaultOptimWrapperConstructor',
     dict(norm_decay_mult=0.0, decay_rate=0.9), 'decay_rate'),
    # It overwrites decay_rate with layer_decay_rate.
    ('mmseg-LayerDecay', beit_seg, 'mmseg.LayerDecayOptimizerConstructor',
     dict(num_layers=3, layer_decay_rate=0.9, decay_rate=0.5), 'decay_rate'),
    ('mmseg-LearningRateDecay', beit_seg,
     'mmseg.LearningRateDecayOptimizerConstructor',
     dict(num_layers=3, decay_rate=0.8, decay_type='layer_wise_vit',
          layer_decay_rate=0.5), 'layer_decay_rate'),
    ('mmdet-LearningRateDecay', convnext_det,
     'mmdet.LearningRateDecayOptimizerConstructor',
     dict(num_layers=6, decay_rate=0.95, decay_type='layer_wise',
          custom_keys={'backbone': dict(lr_mult=0.1)}), 'custom_keys'),
    ('mmpretrain-LearningRateDecay', vit_cls,
     'mmpretrain.LearningRateDecayOptimWrapperConstructor',
     dict(layer_decay_rate=0.75, norm_decay_mult=0.0, bias_lr_mult=2.0),
     'bias_lr_mult'),
]


@pytest.mark.parametrize('model_fn,base,paramwise,unread',
                         [u[1:] for u in UNREAD], ids=[u[0] for u in UNREAD])
def test_a_key_a_known_base_does_not_read_is_an_error(model_fn, base,
                                                      paramwise, unread):
    """The key really is ignored by the base alone (the same groups without
    it); over it, OLOR names it when the optim wrapper is built."""
    model = model_fn()
    without = {k: v for k, v in paramwise.items() if k != unread}
    assert settings_by_param(build(model, base, paramwise), model) == \
        settings_by_param(build(model, base, without), model)
    name = base.split('.')[-1]
    with pytest.raises(ValueError, match=(
            rf"paramwise_cfg key\(s\) \['{unread}'\] are read by no "
            rf'constructor in the chain OLOROptimWrapperConstructor -> '
            rf'{name} \(paramwise_cfg.base_constructor\)')):
        olor(model, base, paramwise)
    olor(model, base, without)  # its own keys pass


def test_a_users_base_gets_its_keys_unchecked_in_one_log_line(tmp_path):
    """A constructor OLOR does not know (a subclass of mmengine's default
    one, here) reads keys OLOR cannot know: they are passed on unchecked,
    a misspelt one included, and the log says so once."""
    model = beit_seg()
    MMLogger.get_instance('unchecked', log_file=str(tmp_path / 'log.txt'))
    ow = olor(model, 'HeadLrTestConstructor',
              dict(head_lr_mult=2.0, backbone_decay_mul=0.5))
    text = (tmp_path / 'log.txt').read_text()
    assert text.count('unchecked') == 1
    assert ("paramwise_cfg key(s) ['head_lr_mult', 'backbone_decay_mul'] go "
            'to test_compose.HeadLrTestConstructor (paramwise_cfg.'
            'base_constructor) unchecked') in text
    for name, s in settings_by_param(ow, model).items():
        if name.startswith('backbone.'):
            assert s['weight_decay'] == OPTIMIZER['weight_decay'], name
        else:
            assert s['lr'] == pytest.approx(2 * OPTIMIZER['lr']), name


def test_reads_are_declared_not_traced():
    """No call-stack inspection in the constructor, and no copy of
    mmengine's __call__: OLOR overrides add_params only."""
    from mmolor.optim import OLOROptimWrapperConstructor
    with open(mmolor.optim.constructor.__file__) as f:
        tree = ast.parse(f.read())
    imported = {a.name.split('.')[0] for n in ast.walk(tree)
                if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split('.')[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {'inspect', 'sys', 'traceback'}, imported
    assert not any(isinstance(n, ast.Attribute) and n.attr in (
        '_getframe', 'f_code', 'f_back') for n in ast.walk(tree))
    assert OLOROptimWrapperConstructor.__call__ is \
        DefaultOptimWrapperConstructor.__call__


def test_custom_keys_rollback_through_a_base_that_copies_them():
    """mmpretrain's constructor copies custom_keys entries into its groups:
    a `rollback` there wins, as with mmengine's."""
    model = vit_cls()
    ow = olor(model, 'LearningRateDecayOptimWrapperConstructor',
              dict(layer_decay_rate=0.75,
                   custom_keys={'backbone.layers.0.': dict(rollback=0.5)}))
    for name, s in settings_by_param(ow, model).items():
        if name.startswith('backbone.layers.0.'):
            assert s['rollback'] == 0.5, name
        elif name.startswith('backbone.layers.2.'):
            assert 0 < s['rollback'] < ROLLBACK['max'], name


def test_wrapped_model_is_unwrapped():
    """A DDP-wrapped model (`.module`) gets the same groups."""
    model = beit_seg()

    class Wrapper(nn.Module):

        def __init__(self, module):
            super().__init__()
            self.module = module

    paramwise = dict(num_layers=3, layer_decay_rate=0.9)
    base = 'mmseg.LayerDecayOptimizerConstructor'
    bare = settings_by_param(olor(model, base, paramwise), model)
    wrapped = olor(Wrapper(model), base, paramwise)
    assert settings_by_param(wrapped, model) == bare


def test_base_constructor_by_class_and_the_users_cfg_untouched():
    model = beit_seg()
    from mmseg.engine.optimizers import LayerDecayOptimizerConstructor
    paramwise = dict(num_layers=3, layer_decay_rate=0.9, rollback=ROLLBACK,
                     base_constructor=LayerDecayOptimizerConstructor)
    before = copy.deepcopy(paramwise)
    cfg = dict(constructor='OLOROptimWrapperConstructor',
               optimizer=dict(OPTIMIZER, type='OLORAdamW'),
               paramwise_cfg=paramwise)
    from mmolor.optim import OLOROptimWrapperConstructor
    constructor = OLOROptimWrapperConstructor(
        dict(optimizer=cfg['optimizer']), paramwise)
    ow = constructor(model)
    # mmseg's LayerDecay renames `layer_decay_rate` in the dict it is given:
    # it got a copy.
    assert paramwise == before
    lrs = {g['lr'] for g in ow.optimizer.param_groups}
    assert len(lrs) == 5  # layer ids 0..4 of a 3-layer BEiT


class CallOverride(DefaultOptimWrapperConstructor):

    def __call__(self, model):
        return super().__call__(model)


BAD_BASES = [
    (42, TypeError, r'Invalid paramwise_cfg\.base_constructor: 42'),
    ('NoSuchConstructor', ValueError,
     r"Invalid paramwise_cfg\.base_constructor: 'NoSuchConstructor' \(no "
     r'optim wrapper constructor of that name'),
    ('OLOROptimWrapperConstructor', ValueError,
     r'OLOR cannot be its own base'),
    (CallOverride, TypeError, r'CallOverride overrides __call__'),
    (nn.Linear, TypeError, r'has no add_params'),
]


@pytest.mark.parametrize('base,error,regex', BAD_BASES,
                         ids=[r for *_, r in BAD_BASES])
def test_bad_base_constructor(base, error, regex):
    model = nn.Sequential(nn.Linear(2, 2))
    model.backbone = model[0]
    with pytest.raises(error, match=regex):
        olor(model, base, {})


def test_base_constructor_lookup_without_a_default_scope():
    """With no default scope: a name only one codebase registers is found;
    one that mmdet and mmseg both register must be scoped; in a scope, the
    scope's class is taken, as mmengine's build_optim_wrapper does."""
    code = r'''
from mmengine.registry import DefaultScope
from mmolor.optim import OLOROptimWrapperConstructor


def base_cls(name):
    """The base class the public constructor looks up for `name`."""
    return OLOROptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='OLORAdamW', lr=0.1)),
        dict(base_constructor=name)).base_cls


assert DefaultScope.get_current_instance() is None
cls = base_cls('LearningRateDecayOptimWrapperConstructor')
assert cls.__module__.startswith('mmpretrain.'), cls
try:
    base_cls('LearningRateDecayOptimizerConstructor')
except ValueError as e:
    assert "is ambiguous without a default scope: write one of " \
        "['mmdet.LearningRateDecayOptimizerConstructor', " \
        "'mmseg.LearningRateDecayOptimizerConstructor']" in str(e), str(e)
else:
    raise AssertionError('not ambiguous')
for scope in ('mmdet', 'mmseg'):
    with DefaultScope.overwrite_default_scope(scope):
        cls = base_cls('LearningRateDecayOptimizerConstructor')
    assert cls.__module__.startswith(scope + '.'), cls
print('ok')
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith('ok')


# ---------------------------------- AMP + lr decay: skip and exact resume


class TinyBEiT(nn.Module):
    """A `backbone` that mmseg's LayerDecay constructor accepts, and a
    head; the loss needs no data samples."""

    def __init__(self):
        super().__init__()
        from mmseg.models.backbones import BEiT
        self.backbone = BEiT(img_size=(16, 16), patch_size=8, embed_dims=8,
                             num_layers=2, num_heads=2, mlp_ratio=2,
                             out_indices=(1, ), drop_path_rate=0.0,
                             init_cfg=None)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        (feat, ) = self.backbone(x)
        return self.head(feat.mean((2, 3))).square().mean()


@pytest.fixture
def amp_on_cpu(monkeypatch):
    """mmengine 0.10.7's AmpOptimWrapper asserts CUDA and takes
    torch.cuda.amp.GradScaler; on the CPU give it torch's CPU GradScaler.
    Everything else (autocast to bfloat16, scale, skip, state_dict) is
    mmengine's and torch's own code."""
    if torch.cuda.is_available():
        return 'cuda'
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp, 'GradScaler',
                        functools.partial(torch.amp.GradScaler, 'cpu'))
    return 'cpu'


def _amp_build(device):
    torch.manual_seed(0)
    model = TinyBEiT().to(device)
    ow = olor(model, 'mmseg.LayerDecayOptimizerConstructor',
              dict(num_layers=2, layer_decay_rate=0.9),
              rollback=dict(max=0.3, min=0.0, power=1.0),
              type='AmpOptimWrapper', dtype='bfloat16',
              loss_scale=dict(init_scale=256.0, growth_interval=2))
    return model, ow


INF_STEPS = (1, 4)  # 0-based: one before the checkpoint, one after


def _amp_steps(model, ow, steps, device):
    for i in steps:
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(
            i)).to(device)
        with ow.optim_context(model):
            loss = model(x)
        ow.backward(loss)
        if i in INF_STEPS:
            grad = model.backbone.layers[0].ffn.layers[0][0].weight.grad
            grad[0, 0] = float('inf')  # a hand-made overflow
            weights = {n: p.detach().clone()
                       for n, p in model.named_parameters()}
            state = {p: {k: v.clone() for k, v in s.items()}
                     for p, s in ow.optimizer.state.items()}
            scale = ow.loss_scaler.get_scale()
        ow.step()
        ow.zero_grad()
        if i in INF_STEPS:  # the whole step was skipped, review included
            assert ow.loss_scaler.get_scale() == scale / 2
            for n, p in model.named_parameters():
                assert torch.equal(p.detach(), weights[n]), n
            assert ow.optimizer.state.keys() == state.keys()
            for p, s in state.items():
                for k, v in s.items():
                    assert torch.equal(ow.optimizer.state[p][k], v), k


def test_amp_and_layer_decay_skip_on_inf_and_resume_exactly(amp_on_cpu):
    """AmpOptimWrapper (bfloat16 autocast, dynamic loss scale) over mmseg's
    LayerDecay constructor: 6 steps straight, and 3 + save + load into a
    fresh build + 3, end bit for bit equal (weights, anchors, AdamW state,
    loss scaler); the inf steps skip learning and review alike."""
    device = amp_on_cpu
    model, ow = _amp_build(device)
    assert type(ow).__name__ == 'AmpOptimWrapper'
    assert len({g['lr'] for g in ow.optimizer.param_groups}) == 4
    _amp_steps(model, ow, range(6), device)
    anchored = [s for s in ow.optimizer.state.values() if 'anchor' in s]
    assert len(anchored) > 10

    part, ow_part = _amp_build(device)
    _amp_steps(part, ow_part, range(3), device)
    buffer = io.BytesIO()
    torch.save(dict(model=part.state_dict(), optim=ow_part.state_dict()),
               buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed, ow_resumed = _amp_build(device)  # fresh weights, then load
    resumed.load_state_dict(saved['model'])
    ow_resumed.load_state_dict(saved['optim'])
    _amp_steps(resumed, ow_resumed, range(3, 6), device)

    for (n, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    full, res = ow.state_dict(), ow_resumed.state_dict()
    assert full['loss_scaler'] == res['loss_scaler']
    assert full['param_groups'] == res['param_groups']
    assert full['state'].keys() == res['state'].keys()
    for index, state in full['state'].items():
        assert state.keys() == res['state'][index].keys()
        for key, value in state.items():
            assert torch.equal(value, res['state'][index][key]), key
