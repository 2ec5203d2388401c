# Copyright (c) mmolor contributors. All rights reserved.
"""Census of backbones: mmolor's layer depths on every upstream backbone.

Every backbone type that a config shipped inside mmdet and mmseg puts under
a ``backbone`` key is built from that config's own backbone dict (weights
stripped), plus mmpretrain's ConvNeXt and VisionTransformer and timm models
through mmpretrain's ``TIMMBackbone``. Each is checked against an order
taken independently of the depth rule: forward pre-hooks on every module
that owns parameters give the order in which a forward pass first uses
them.
"""
import copy
import glob
import os.path as osp
import re
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from mmolor.optim.layer_depth import dummy_inputs, get_layer_depths

__all__ = ['Case', 'collect_cases', 'check_case', 'MULTI_BRANCH', 'SKIPPED']

# Backbones whose branches run side by side, so that a forward pass goes
# back to a shallower depth when it starts the next branch. Their
# documented rule: a block is one deeper than the deepest block that feeds
# it, so parallel branches stand at equal depths. (UNet, ICNet, Fast-SCNN,
# CGNet also have branches, but their forward order never goes back: they
# pass the single-path check.)
MULTI_BRANCH = {
    'HRNet', 'HourglassNet', 'BiSeNetV1', 'BiSeNetV2', 'DDRNet', 'PIDNet',
    'STDCContextPathNet'
}
# Types that cannot be built here, and why.
SKIPPED = {
    'VPD (mmseg)': 'needs diffusers and a Stable Diffusion checkpoint to '
    'build',
}


class Case(NamedTuple):
    type: str  # backbone type as the config names it
    source: str  # the config (or 'mmpretrain' / 'timm') it comes from
    cfg: Dict[str, Any]  # the backbone dict, weights stripped
    scope: str  # registry scope it is built in


def _site(package: str) -> str:
    module = __import__(package)
    return osp.join(osp.dirname(module.__file__), '.mim', 'configs')


def _backbone_types(scope: str) -> set:
    from mmengine.registry import MODELS as ROOT  # noqa: F401
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    __import__(f'{scope}.models')
    return {
        name
        for name, cls in registry.module_dict.items()
        if cls.__module__.startswith(f'{scope}.models.backbones')
    }


def _find_backbones(cfg: Any, found: list) -> list:
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == 'backbone' and isinstance(value, dict) and \
                    isinstance(value.get('type'), str):
                found.append(value)
            _find_backbones(value, found)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _find_backbones(value, found)
    return found


def _strip_weights(cfg: Dict[str, Any]) -> Dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    cfg.pop('init_cfg', None)
    if 'pretrained' in cfg:
        cfg['pretrained'] = False if cfg['type'].endswith(
            'TIMMBackbone') else None
    for key in ('backbone_cfg', ):  # ICNet & co. build a backbone inside
        if isinstance(cfg.get(key), dict):
            cfg[key] = _strip_weights(cfg[key])
    return cfg


def _label(btype: str, scope: str) -> str:
    """mmdet and mmseg each have a ResNet, an HRNet, a Swin ...: both
    count. mmpretrain's types are one whoever uses them."""
    return btype if btype.startswith('mmpretrain.') else \
        f'{btype} ({scope})'


def collect_cases() -> List[Case]:
    """One case per backbone type used by an mmdet or mmseg config."""
    from mmengine.config import Config
    cases: Dict[str, Case] = {}
    for scope in ('mmdet', 'mmseg'):
        root = _site(scope)
        files = sorted(glob.glob(osp.join(root, '**', '*.py'),
                                 recursive=True))
        known = _backbone_types(scope)
        texts = {f: open(f).read() for f in files}
        for name in sorted(known | {'mmpretrain.*'}):
            if _label(name, scope) in cases:
                continue
            pattern = (r"type=['\"](mmpretrain\.\w+)['\"]"
                       if name == 'mmpretrain.*' else
                       rf"type=['\"]{re.escape(name)}['\"]")
            for f in (f for f in files if re.search(pattern, texts[f])):
                try:
                    cfg = Config.fromfile(f)
                except Exception:  # a config that needs a missing package
                    continue
                for backbone in _find_backbones(cfg.to_dict(), []):
                    btype = backbone['type']
                    label = _label(btype, scope)
                    if label in cases or not (
                            btype == name or name == 'mmpretrain.*'
                            and btype.startswith('mmpretrain.')):
                        continue
                    cases[label] = Case(label, f'{scope}::' +
                                        osp.relpath(f, root),
                                        _strip_weights(backbone), scope)
                if name != 'mmpretrain.*' and _label(name, scope) in cases:
                    break
    cases.update({c.type: c for c in _extra_cases()})
    return list(cases.values())


def _extra_cases() -> List[Case]:
    timm = dict(type='mmpretrain.TIMMBackbone', pretrained=False)
    return [
        Case('mmpretrain.ConvNeXt (tiny)', 'mmpretrain',
             dict(type='mmpretrain.ConvNeXt', arch='tiny'), 'mmdet'),
        Case('mmpretrain.VisionTransformer (b)', 'mmpretrain',
             dict(type='mmpretrain.VisionTransformer', arch='b',
                  img_size=224), 'mmdet'),
        Case('TIMMBackbone convnext_tiny', 'timm',
             dict(timm, model_name='convnext_tiny', features_only=True),
             'mmdet'),
        Case('TIMMBackbone vit_small_patch16_224', 'timm',
             dict(timm, model_name='vit_small_patch16_224'), 'mmdet'),
        Case('TIMMBackbone efficientnet_b0', 'timm',
             dict(timm, model_name='efficientnet_b0', features_only=True),
             'mmdet'),
    ]


def build_case(case: Case) -> nn.Module:
    from mmengine.registry import init_default_scope
    import mmpretrain.models  # noqa: F401 (registers mmpretrain types)
    init_default_scope(case.scope)
    registry = __import__(f'{case.scope}.registry',
                          fromlist=['MODELS']).MODELS
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return registry.build(copy.deepcopy(case.cfg))


def first_use_order(module: nn.Module) -> List[str]:
    """Names of parameters in the order a forward pass first uses them.

    A module's own parameters count as used when its forward starts. The
    dummy images are the ones the depth rule tries; the first one the
    backbone takes is used.
    """
    order: List[str] = []
    seen: set = set()

    def hook(mod, args, own):
        order.extend(n for n in own if n not in seen)
        seen.update(own)

    handles = []
    for prefix, m in module.named_modules():
        own = [f'{prefix}.{n}' if prefix else n
               for n, _ in m.named_parameters(recurse=False)]
        if own:
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, own=own: hook(mod, args, own)))
    training = module.training
    try:
        module.eval()
        for image in dummy_inputs(module):
            order.clear(), seen.clear()
            try:
                with torch.no_grad():
                    module(image.detach())
                break
            except Exception:
                continue
        else:
            order.clear()
    finally:
        module.train(training)
        for h in handles:
            h.remove()
    named = {n for n, _ in module.named_parameters()}
    return [n for n in order if n in named]


def _base(label: str) -> str:
    """``'HRNet (mmseg)' -> 'HRNet'``, ``'mmpretrain.ConvNeXt' ->
    'ConvNeXt'``."""
    return label.split(' ')[0].split('.')[-1]


class Row(NamedTuple):
    type: str
    source: str
    rule: str
    max_depth: int
    num_blocks: int
    seconds: float
    problems: Tuple[str, ...]


def check_case(case: Case) -> Row:
    """Build the backbone, take its block depths and check them."""
    start = time.time()
    module = build_case(case)
    found = get_layer_depths(module, 'block')
    depths = found.depths
    problems: List[str] = []
    if found.fallback:
        problems.append(f'no forward pass: {found.rule}')
    if not found.blocks:
        problems.append('no blocks found')
    for block in found.blocks:
        inside = {depths[n] for n in depths if n.startswith(block + '.')}
        if len(inside) > 1:
            problems.append(f'block {block} split over depths {inside}')
    order = first_use_order(module)
    if not order:
        problems.append('no forward pass for the order check')
    block_order = []
    for name in order:
        block = next((b for b in found.blocks
                      if name.startswith(b + '.')), None)
        if block is not None and block not in block_order:
            block_order.append(block)
    block_depth = {b: depths[next(n for n in depths
                                  if n.startswith(b + '.'))]
                   for b in found.blocks}
    if _base(case.type) in MULTI_BRANCH:
        # Consecutive blocks of one nn.Sequential are one apart.
        for a, b in zip(found.blocks, found.blocks[1:]):
            parent = a.rpartition('.')[0]
            if parent == b.rpartition('.')[0] and isinstance(
                    module.get_submodule(parent), nn.Sequential) and \
                    block_depth[b] != block_depth[a] + 1:
                problems.append(f'{a} -> {b}: depth {block_depth[a]} -> '
                                f'{block_depth[b]} in one container')
    else:
        for a, b in zip(block_order, block_order[1:]):
            if block_depth[b] <= block_depth[a]:
                problems.append(f'block {b} (depth {block_depth[b]}) '
                                f'after {a} (depth {block_depth[a]})')
        for a, b in zip(order, order[1:]):
            if depths[b] < depths[a]:
                problems.append(f'forward order: {b} (depth {depths[b]}) '
                                f'after {a} (depth {depths[a]})')
                break
    return Row(case.type, case.source, found.rule, found.max_depth,
               len(found.blocks), time.time() - start, tuple(problems))


def format_table(rows: List[Row]) -> str:
    """One Markdown row per backbone: D, blocks and what the blocks are."""
    lines = ['| backbone | config it comes from | D | blocks | blocks found |'
             ' paths |', '|---|---|---|---|---|---|']
    for r in rows:
        kinds = r.rule.split('blocks: ', 1)[-1].split(')', 1)[0]
        paths = 'parallel branches' if _base(r.type) in MULTI_BRANCH \
            else 'single path'
        lines.append(f'| {r.type} | `{r.source}` | {r.max_depth} | '
                     f'{r.num_blocks} | {kinds} | {paths} |')
    return '\n'.join(lines)
