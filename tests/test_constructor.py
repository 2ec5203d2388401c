# Copyright (c) mmolor contributors. All rights reserved.
"""OLOROptimWrapperConstructor: exact per-parameter rollback on real models.

The expected depth of every parameter is written here from the
architectures (a regex per family), independently of mmolor's rules.
"""
import math
import re
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmolor.optim import OLORAdamW
from expected_depths import resnet_depth, swin_depth, vit_depth
from reference import rollback_by_depth

ROLLBACK = dict(max=0.02, min=0.004, power=2.0)


def det_model(backbone: dict) -> nn.Module:
    """A real mmdet Mask R-CNN with the given (small) backbone."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    register_all_modules()
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    backbone = dict(backbone)
    cfg.model.neck.in_channels = backbone.pop('_neck_in')
    cfg.model.backbone = backbone
    return MODELS.build(cfg.model)


def resnet18(**kwargs):
    return dict(dict(type='ResNet', depth=18, base_channels=8,
                     stem_channels=8, num_stages=4, out_indices=(0, 1, 2, 3),
                     frozen_stages=-1, norm_cfg=dict(type='BN',
                                                     requires_grad=True),
                     norm_eval=True, style='pytorch', init_cfg=None,
                     _neck_in=[8, 16, 32, 64]), **kwargs)


def det_swin(**kwargs):
    return dict(type='SwinTransformer', embed_dims=16, depths=[2, 2, 3, 1],
                num_heads=[1, 2, 2, 4], window_size=4, out_indices=(0, 1, 2,
                                                                     3),
                init_cfg=None, _neck_in=[16, 32, 64, 128], **kwargs)


def seg_model(backbone: dict, channels) -> nn.Module:
    """A real mmseg UPerNet with the given (small) backbone."""
    from mmengine.hub import get_config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = get_config('mmseg::_base_/models/upernet_r50.py')
    cfg.model.pop('data_preprocessor')
    cfg.model.pretrained = None
    cfg.model.backbone = backbone
    cfg.model.decode_head.update(in_channels=channels, channels=16,
                                 num_classes=3, norm_cfg=dict(type='BN'))
    cfg.model.auxiliary_head.update(in_channels=channels[2], channels=8,
                                    num_classes=3, norm_cfg=dict(type='BN'))
    return MODELS.build(cfg.model)


def build(model, rollback=None, optimizer=None, **paramwise):
    paramwise = dict(paramwise)
    if rollback is not None:
        paramwise['rollback'] = rollback
    cfg = dict(constructor='OLOROptimWrapperConstructor',
               optimizer=optimizer or dict(type='OLORAdamW', lr=1e-3,
                                           weight_decay=0.05),
               paramwise_cfg=paramwise)
    return build_optim_wrapper(model, cfg)


def rollback_of(optim_wrapper, model):
    """name -> rollback of its group (groups hold one param each)."""
    name_of = {p: n for n, p in model.named_parameters()}
    out = {}
    for g in optim_wrapper.optimizer.param_groups:
        for p in g['params']:
            out[name_of[p]] = g['rollback']
    return out


def check_exact(model, optim_wrapper, depth_fn, max_depth, cfg):
    got = rollback_of(optim_wrapper, model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(got) == sorted(trainable)  # frozen ones are not groups
    for name in trainable:
        if name.startswith('backbone.'):
            want = rollback_by_depth(depth_fn(name), max_depth, cfg['max'],
                                     cfg['min'], cfg['power'])
        else:
            want = 0.0  # neck and heads do not roll back
        assert got[name] == pytest.approx(want, rel=1e-12, abs=0), name


@pytest.mark.parametrize('mode', ['block', 'stage'])
def test_mmdet_resnet(mode):
    model = det_model(resnet18())
    ow = build(model, dict(ROLLBACK, layer=mode))
    sizes, max_depth = [2, 2, 2, 2], 8 if mode == 'block' else 4
    check_exact(model, ow, lambda n: resnet_depth(n, sizes, mode), max_depth,
                ROLLBACK)
    # the stem gets max, the last block min
    got = rollback_of(ow, model)
    assert got['backbone.conv1.weight'] == ROLLBACK['max']
    assert got['backbone.layer4.1.conv2.weight'] == pytest.approx(
        ROLLBACK['min'])


@pytest.mark.parametrize('backbone', [
    dict(type='ResNetV1d', depth=18),
    dict(type='ResNeXt', depth=50, groups=4, base_width=2),
])
def test_mmdet_resnet_variants(backbone):
    """ResNetV1d (deep stem) and ResNeXt follow the ResNet rule."""
    sizes = [2, 2, 2, 2] if backbone['depth'] == 18 else [3, 4, 6, 3]
    expansion = 1 if backbone['depth'] == 18 else 4
    model = det_model(resnet18(
        **backbone, _neck_in=[8 * expansion * 2**i for i in range(4)]))
    ow = build(model, ROLLBACK)
    check_exact(model, ow, lambda n: resnet_depth(n, sizes, 'block'),
                sum(sizes), ROLLBACK)


def test_mmdet_resnet_frozen_stages_are_excluded_but_keep_depth():
    """frozen_stages=1 freezes stem + layer1: not in the optimizer, not
    counted as rolling back, but depth stays the architecture's."""
    model = det_model(resnet18(frozen_stages=1))
    ow = build(model, ROLLBACK)
    got = rollback_of(ow, model)
    assert not any(n.startswith(('backbone.conv1', 'backbone.bn1',
                                 'backbone.layer1.')) for n in got)
    check_exact(model, ow, lambda n: resnet_depth(n, [2, 2, 2, 2], 'block'),
                8, ROLLBACK)
    assert got['backbone.layer2.0.conv1.weight'] == pytest.approx(
        rollback_by_depth(3, 8, **_args(ROLLBACK)))


def _args(cfg):
    return dict(r_max=cfg['max'], r_min=cfg['min'], power=cfg['power'])


def test_tensor_mode_is_the_authors_rule():
    """layer='tensor': index of the trainable tensor in the scope (frozen
    ones not counted), N = count - 1."""
    model = det_model(resnet18(frozen_stages=1))
    cfg = dict(max=0.01, min=0.0, power=1.0, layer='tensor')
    ow = build(model, cfg)
    got = rollback_of(ow, model)
    names = [n for n, p in model.backbone.named_parameters()
             if p.requires_grad]
    for i, n in enumerate(names):
        assert got['backbone.' + n] == pytest.approx(
            0.01 * (1 - i / (len(names) - 1)))


@pytest.mark.parametrize('mode', ['block', 'stage'])
def test_mmdet_swin(mode):
    model = det_model(det_swin())
    sizes = [2, 2, 3, 1]
    ow = build(model, dict(ROLLBACK, layer=mode))
    check_exact(model, ow, lambda n: swin_depth(n, sizes, mode),
                sum(sizes) if mode == 'block' else 4, ROLLBACK)


@pytest.mark.parametrize('mode', ['block', 'stage'])
def test_mmseg_swin_and_resnetv1c(mode):
    swin = seg_model(
        dict(type='SwinTransformer', embed_dims=16, depths=[1, 2, 2, 1],
             num_heads=[1, 2, 2, 4], window_size=4, use_abs_pos_embed=True,
             pretrain_img_size=32, init_cfg=None), [16, 32, 64, 128])
    ow = build(swin, dict(ROLLBACK, layer=mode))
    assert 'backbone.absolute_pos_embed' in rollback_of(ow, swin)
    check_exact(swin, ow, lambda n: swin_depth(n, [1, 2, 2, 1], mode),
                6 if mode == 'block' else 4, ROLLBACK)

    resnet = seg_model(
        dict(type='ResNetV1c', depth=18, base_channels=8, stem_channels=8,
             norm_cfg=dict(type='BN'), init_cfg=None), [8, 16, 32, 64])
    ow = build(resnet, dict(ROLLBACK, layer=mode))
    assert any(n.startswith('backbone.stem.') for n in rollback_of(ow,
                                                                   resnet))
    check_exact(resnet, ow, lambda n: resnet_depth(n, [2, 2, 2, 2], mode),
                8 if mode == 'block' else 4, ROLLBACK)


@pytest.mark.parametrize('backbone', ['VisionTransformer', 'BEiT', 'MAE'])
@pytest.mark.parametrize('mode', ['block', 'stage'])
def test_mmseg_vit_family(backbone, mode):
    cfg = dict(type=backbone, img_size=(32, 32), patch_size=8, embed_dims=16,
               num_layers=3, num_heads=2, mlp_ratio=2, out_indices=(0, 1, 2),
               final_norm=True, init_cfg=None)
    if backbone == 'VisionTransformer':
        cfg['pre_norm'] = True
    model = seg_model(cfg, [16, 16, 16, 16])
    names = [n for n, _ in model.named_parameters()]
    assert 'backbone.ln1.weight' in names  # the final norm is there
    ow = build(model, dict(ROLLBACK, layer=mode))
    check_exact(model, ow, lambda n: vit_depth(n, 3, mode),
                3 if mode == 'block' else 1, ROLLBACK)


class LayerDepthBackbone(nn.Module):
    """mmpretrain-style backbone with an lr-decay ``get_layer_depth``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 4, stride=4)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
            for _ in range(4))
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.norm(x)

    def get_layer_depth(self, param_name, prefix=''):
        # two blocks per lr-decay group, as mmpretrain's ConvNeXt has
        num_layers = 2 + 2
        name = param_name[len(prefix):]
        if name.startswith('embed'):
            return 0, num_layers
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) // 2 + 1, num_layers
        return num_layers - 1, num_layers


class Toy(nn.Module):

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)


def test_get_layer_depth_is_not_the_block_rule():
    # get_layer_depth groups blocks for lr decay; block depths count blocks
    model = Toy(LayerDepthBackbone())
    ow = build(model, ROLLBACK)
    got = rollback_of(ow, model)
    expect = {'embed': 0, 'blocks.0': 1, 'blocks.1': 2, 'blocks.2': 3,
              'blocks.3': 4, 'norm': 4}
    for name, value in got.items():
        if name.startswith('backbone.'):
            key = name[len('backbone.'):].rsplit('.', 2)[0]
            key = key if key in expect else key.rsplit('.', 1)[0]
            assert value == pytest.approx(
                rollback_by_depth(expect[key], 4, **_args(ROLLBACK))), name
        else:
            assert value == 0.0


def log_to(tmp_path, name):
    logger = MMLogger.get_instance(name, log_file=str(tmp_path / 'log.txt'))
    return logger, tmp_path / 'log.txt'


def test_plain_layer_stack_counts_its_layers():
    # no block holds two weight layers: each repeated conv is a layer, and
    # a norm joins the conv before it
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                             nn.Conv2d(4, 4, 1))
    model = Toy(backbone)
    ow = build(model, ROLLBACK)
    got = rollback_of(ow, model)
    expect = {'0': 0, '1': 0, '3': 1, '4': 1, '5': 2}
    for name, value in got.items():
        if name.startswith('backbone.'):
            assert value == pytest.approx(rollback_by_depth(
                expect[name.split('.')[1]], 2, **_args(ROLLBACK)))


class NoImageBackbone(nn.Module):
    """Blocks, but a forward that takes no image."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(2, 4)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
            for _ in range(3))

    def forward(self, tokens, mask):
        raise TypeError('needs tokens and a mask')


def test_no_forward_pass_falls_back_to_registration_order(tmp_path):
    model = Toy(NoImageBackbone())
    _, log = log_to(tmp_path, 'no_forward')
    ow = build(model, ROLLBACK)
    got = rollback_of(ow, model)
    expect = {'embed': 0, 'blocks.0': 1, 'blocks.1': 2, 'blocks.2': 3}
    for name, value in got.items():
        if name.startswith('backbone.'):
            key = name[len('backbone.'):].rsplit('.', 2)[0]
            key = key if key in expect else name.split('.')[1]
            assert value == pytest.approx(rollback_by_depth(
                expect[key], 3, **_args(ROLLBACK))), name
    text = log.read_text()
    assert 'WARNING' in text
    assert 'no forward pass through NoImageBackbone' in text
    assert '0: embed; 1: blocks.0.0, blocks.0.2; 2: blocks.1.0' in text


def test_logs_one_table(tmp_path):
    model = det_model(resnet18(frozen_stages=1))
    _, log = log_to(tmp_path, 'one_table')
    build(model, ROLLBACK)
    text = log.read_text()
    assert text.count('OLOR rollback:') == 1
    assert 'structural blocks (16 blocks; blocks: BasicBlock x8)' not in text
    assert 'structural blocks (8 blocks; blocks: BasicBlock x8)' in text
    rows = re.findall(r'^\s+(\d+|outside) \| +([\d,]+) \| (\S+)$', text,
                      re.M)
    by_depth = {d: (int(n.replace(',', '')), float(r)) for d, n, r in rows}
    assert sorted(k for k in by_depth if k != 'outside') == [
        str(d) for d in range(3, 9)]  # stem + layer1 (depth 0-2) frozen
    layer4 = sum(p.numel() for n, p in model.backbone.layer4[1].
                 named_parameters())
    assert by_depth['8'] == (layer4, pytest.approx(ROLLBACK['min']))
    outside = sum(p.numel() for n, p in model.named_parameters()
                  if not n.startswith('backbone.') and p.requires_grad)
    assert by_depth['outside'] == (outside, 0.0)


def test_custom_keys_set_rollback_and_win():
    model = det_model(resnet18())
    ow = build(model, ROLLBACK, custom_keys={
        'backbone.layer4': dict(rollback=0.5),
        'roi_head.bbox_head': dict(rollback=0.25, lr_mult=0.1)})
    got = rollback_of(ow, model)
    for name, value in got.items():
        if name.startswith('backbone.layer4'):
            assert value == 0.5
        elif name.startswith('roi_head.bbox_head'):
            assert value == 0.25
        elif name.startswith('backbone.'):
            assert value == pytest.approx(rollback_by_depth(
                resnet_depth(name, [2, 2, 2, 2], 'block'), 8,
                **_args(ROLLBACK)))
        else:
            assert value == 0.0


def test_paramwise_features_are_kept():
    """norm_decay_mult, bias_lr_mult and custom lr_mult still apply."""
    model = det_model(resnet18())
    ow = build(model, ROLLBACK, norm_decay_mult=0.0, bias_lr_mult=2.0,
               custom_keys={'neck': dict(lr_mult=0.5)})
    name_of = {p: n for n, p in model.named_parameters()}
    for g in ow.optimizer.param_groups:
        name = name_of[g['params'][0]]
        if name.startswith('backbone.bn1'):
            assert g['weight_decay'] == 0.0
        if name == 'rpn_head.rpn_conv.bias':
            assert g['lr'] == pytest.approx(2e-3)
        if name.startswith('neck.'):
            assert g['lr'] == pytest.approx(5e-4)


def test_rollback_only_paramwise_cfg_builds_groups():
    """mmengine skips per-param groups when paramwise_cfg is empty; with only
    `rollback` in it, groups must still be built."""
    model = det_model(resnet18())
    ow = build(model, dict(max=0.01))
    groups = ow.optimizer.param_groups
    assert len(groups) == sum(1 for p in model.parameters()
                              if p.requires_grad)
    assert groups[0]['rollback'] == 0.01  # backbone.conv1.weight


def test_without_rollback_cfg_is_the_default_constructor():
    model = Toy(LayerDepthBackbone())
    ow = build(model, optimizer=dict(type='OLORAdamW', lr=1e-3,
                                     rollback=0.05))
    assert len(ow.optimizer.param_groups) == 1
    assert ow.optimizer.param_groups[0]['rollback'] == 0.05


def test_scope_stacks_entries_shallow_to_deep():
    """scope=['backbone', 'neck']: the neck's layers continue the depth."""
    model = Toy(LayerDepthBackbone())
    ow = build(model, dict(ROLLBACK, scope=['backbone', 'neck']))
    got = rollback_of(ow, model)
    # backbone 0..4, neck (one generic layer) 5; D = 5; head outside
    assert got['backbone.embed.weight'] == ROLLBACK['max']
    assert got['backbone.norm.weight'] == pytest.approx(
        rollback_by_depth(4, 5, **_args(ROLLBACK)))
    assert got['neck.weight'] == pytest.approx(ROLLBACK['min'])
    assert got['head.weight'] == 0.0


def test_one_step_through_the_wrapper_rolls_back_per_group():
    """The built optimizer applies each group's own kappa."""
    model = Toy(LayerDepthBackbone()).double()
    ow = build(model, dict(max=0.5, min=0.0, power=1.0),
               optimizer=dict(type='OLORSGD', lr=0.1,
                              rollback_follows_lr=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ow.step()
    for n, p in model.named_parameters():
        r = rollback_of(ow, model)[n]
        assert torch.allclose(p.detach(), before[n] - (1 - r) * 0.1)


# (paramwise rollback cfg, extra paramwise / optimizer, error, regex)
BAD = [
    (0.1, {}, TypeError, r'paramwise_cfg\.rollback must be a dict'),
    (dict(maxx=0.1), {}, ValueError,
     r"Unknown key\(s\) in paramwise_cfg\.rollback: \['maxx'\]"),
    (dict(max=-0.1), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.max: -0\.1'),
    (dict(max=1.5), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.max: 1\.5'),
    (dict(max=math.nan), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.max: nan'),
    (dict(max='0.1'), {}, TypeError,
     r"Invalid paramwise_cfg\.rollback\.max: '0\.1'"),
    (dict(min=-1e-3), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.min: -0\.001'),
    (dict(max=0.1, min=0.2), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.min: 0\.2 \(must not exceed max: '
     r'0\.1\)'),
    (dict(power=-1), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.power: -1'),
    (dict(power=math.inf), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.power: inf'),
    (dict(power=math.nan), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.power: nan'),
    (dict(power='2'), {}, TypeError,
     r"Invalid paramwise_cfg\.rollback\.power: '2'"),
    (dict(layer='blocks'), {}, ValueError,
     r"Invalid paramwise_cfg\.rollback\.layer: 'blocks'"),
    (dict(scope=[]), {}, ValueError,
     r'Invalid paramwise_cfg\.rollback\.scope: \[\]'),
    (dict(scope=[1]), {}, TypeError,
     r'Invalid paramwise_cfg\.rollback\.scope: \[1\]'),
    (dict(scope=['bakbone']), {}, ValueError,
     r"scope entry 'bakbone': .* has no such module"),
    (dict(scope=['backbone.layer1']), dict(frozen=1), ValueError,
     r"scope entry 'backbone\.layer1': it matches no trainable parameter"),
    (dict(scope=['backbone', 'backbone.layer2']), {}, ValueError,
     r"scope entry 'backbone\.layer2': it overlaps"),
    (dict(), dict(optimizer=dict(type='AdamW', lr=1e-3)), ValueError,
     r"needs an OLOR optimizer .*got optimizer\.type='AdamW'"),
    (None, dict(custom_keys={'backbone': dict(rollback=1.5)}), ValueError,
     r"Invalid paramwise_cfg\.custom_keys\['backbone'\]\.rollback: 1\.5"),
    (None, dict(custom_keys={'backbone': dict(rollback=0.1)},
                optimizer=dict(type='SGD', lr=1e-3)), ValueError,
     r"needs an OLOR optimizer .*got optimizer\.type='SGD'"),
]


@pytest.mark.parametrize('rollback,extra,error,regex', BAD,
                         ids=[r for *_, r in BAD])
def test_bad_settings(rollback, extra, error, regex):
    extra = dict(extra)
    frozen = extra.pop('frozen', -1)
    model = det_model(resnet18(frozen_stages=frozen))
    with pytest.raises(error, match=regex):
        build(model, rollback, **extra)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', None])
def test_registry_from_config_under_default_scope(scope):
    """Unscoped `type='OLORAdamW'` and the constructor resolve under the
    mmdet and mmseg default scopes and with none (fresh interpreter)."""
    code = f'''
import torch
from mmengine.registry import init_default_scope, DefaultScope, OPTIMIZERS
from mmengine.optim import build_optim_wrapper
import mmolor
scope = {scope!r}
if scope:
    init_default_scope(scope)
assert DefaultScope.get_current_instance() is None or \\
    DefaultScope.get_current_instance().scope_name == scope
model = torch.nn.Sequential(torch.nn.Linear(2, 2))
model.backbone = model[0]
for name in ('OLORAdamW', 'OLORAdam', 'OLORSGD'):
    ow = build_optim_wrapper(model, dict(
        constructor='OLOROptimWrapperConstructor',
        optimizer=dict(type=name, lr=0.1),
        paramwise_cfg=dict(rollback=dict(max=0.3))))
    assert type(ow.optimizer).__name__ == name, type(ow.optimizer)
    assert [g['rollback'] for g in ow.optimizer.param_groups] == [0.3, 0.3]
if scope:
    import importlib
    child = importlib.import_module(scope + '.registry').OPTIMIZERS
    opt = child.build(dict(type='OLORSGD', params=model.parameters(), lr=1))
    assert type(opt).__name__ == 'OLORSGD'
print('ok')
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith('ok')


def test_olor_adamw_through_constructor_is_a_plain_torch_step_outside():
    """Outside the scope the optimizer is plain AdamW, bit for bit."""
    torch.manual_seed(0)
    model = Toy(LayerDepthBackbone())
    twin = Toy(LayerDepthBackbone())
    twin.load_state_dict(model.state_dict())
    ow = build(model, ROLLBACK)
    ref = torch.optim.AdamW(twin.head.parameters(), lr=1e-3,
                            weight_decay=0.05)
    for _ in range(3):
        for p, q in zip(model.head.parameters(), twin.head.parameters()):
            p.grad = torch.full_like(p, 0.3)
            q.grad = torch.full_like(q, 0.3)
        ow.step()
        ref.step()
    for p, q in zip(model.head.parameters(), twin.head.parameters()):
        assert torch.equal(p, q)
    assert isinstance(ow.optimizer, OLORAdamW)
