# Copyright (c) mmolor contributors. All rights reserved.
"""Depth of every parameter of a backbone, for OLOR's layer-wise penalty.

Depth 0 is the stem / patch embedding; the deepest layer has depth ``D``.
Rules are chosen by the module's class (matched by its qualified name, so
neither mmdet nor mmseg needs to be imported here):

* ``block``: one step per residual / transformer block, in forward order.
* ``stage``: one step per stage.

Backbones that define mmpretrain's ``get_layer_depth(name)`` use it (block
mode). Any other module falls back to a generic rule, and the rule used is
reported so the constructor can log it.
"""
from typing import Callable, Dict, List, NamedTuple, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ['LayerDepths', 'get_layer_depths']

_RESNETS = ('mmdet.models.backbones.resnet.ResNet',
            'mmseg.models.backbones.resnet.ResNet')
_SWINS = ('mmdet.models.backbones.swin.SwinTransformer',
          'mmseg.models.backbones.swin.SwinTransformer')
_VITS = ('mmseg.models.backbones.vit.VisionTransformer',
         'mmseg.models.backbones.beit.BEiT')  # MAE is a BEiT
_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


class LayerDepths(NamedTuple):
    """Depth of each parameter (by name, relative to the module)."""
    depths: Dict[str, int]
    max_depth: int
    rule: str  # how the depths were derived, for the log
    fallback: bool = False  # True when the generic rule was used


def _is_one_of(module: nn.Module, qualnames) -> bool:
    return any(f'{c.__module__}.{c.__qualname__}' in qualnames
               for c in type(module).__mro__)


def _index_after(name: str, prefix: str) -> Optional[int]:
    """``'layers.3.ffn.w' -> 3`` for prefix ``'layers'``; None otherwise."""
    if not name.startswith(prefix + '.'):
        return None
    return int(name[len(prefix) + 1:].split('.', 1)[0])


def _resnet(module: nn.Module, mode: str) -> LayerDepths:
    # Stem (conv1/bn1 or deep `stem`) is 0; `layer{s}.{b}` is a block.
    stage_sizes = [len(getattr(module, n)) for n in module.res_layers]
    depths = {}
    for name, _ in module.named_parameters():
        depth = 0
        for s, layer_name in enumerate(module.res_layers):
            b = _index_after(name, layer_name)
            if b is not None:
                depth = s + 1 if mode == 'stage' else \
                    sum(stage_sizes[:s]) + b + 1
        depths[name] = depth
    max_depth = len(stage_sizes) if mode == 'stage' else sum(stage_sizes)
    return LayerDepths(depths, max_depth,
                       f'ResNet {mode}s: stem 0, res layers 1..{max_depth}')


def _swin(module: nn.Module, mode: str) -> LayerDepths:
    # patch_embed / absolute_pos_embed are 0; `stages.{s}.blocks.{b}` is a
    # block; a stage's downsample and its output `norm{s}` follow the stage's
    # last block.
    sizes = [len(stage.blocks) for stage in module.stages]
    ends = [sum(sizes[:s + 1]) for s in range(len(sizes))]
    depths = {}
    for name, _ in module.named_parameters():
        depth = 0
        s = _index_after(name, 'stages')
        if s is None and name.startswith('norm') and \
                name[4:].split('.', 1)[0].isdigit():
            s = int(name[4:].split('.', 1)[0])
        if s is not None:
            b = _index_after(name, f'stages.{s}.blocks')
            if mode == 'stage':
                depth = s + 1
            elif b is not None:
                depth = ends[s] - sizes[s] + b + 1
            else:
                depth = ends[s]
        depths[name] = depth
    max_depth = len(sizes) if mode == 'stage' else ends[-1]
    return LayerDepths(depths, max_depth,
                       f'Swin {mode}s: patch embedding 0, '
                       f'stages 1..{max_depth}')


def _vit(module: nn.Module, mode: str) -> LayerDepths:
    # patch_embed / cls_token / pos_embed / pre-norm are 0, `layers.{i}` is
    # block i + 1 and the final norm follows the last block. A plain ViT is
    # a single stage.
    num_layers = len(module.layers)
    final_norm = getattr(module, 'norm1_name', None) \
        if getattr(module, 'final_norm', False) else None
    max_depth = 1 if mode == 'stage' else num_layers
    depths = {}
    for name, _ in module.named_parameters():
        i = _index_after(name, 'layers')
        if i is not None:
            depths[name] = 1 if mode == 'stage' else i + 1
        elif final_norm and name.startswith(final_norm + '.'):
            depths[name] = max_depth
        else:
            depths[name] = 0
    return LayerDepths(depths, max_depth,
                       f'ViT {mode}s: patch embedding 0, '
                       f'transformer layers 1..{max_depth}')


def _get_layer_depth(module: nn.Module, mode: str) -> LayerDepths:
    depths, max_depth = {}, 0
    for name, _ in module.named_parameters():
        depth, num_layers = module.get_layer_depth(name)
        depths[name] = depth
        max_depth = max(max_depth, num_layers - 1)
    return LayerDepths(depths, max_depth,
                       f'{type(module).__name__}.get_layer_depth '
                       f'(0..{max_depth})')


def _generic(module: nn.Module, mode: str) -> LayerDepths:
    """Fallback: order by the module that owns each parameter.

    block: every module that owns parameters is a layer, in registration
    (≈ forward) order, and a normalisation layer shares the depth of the
    layer before it. stage: every direct child is a layer (direct
    parameters of the module itself are depth 0).
    """
    depths: Dict[str, int] = {}
    if mode == 'stage':
        children = [n for n, m in module.named_children()
                    if any(True for _ in m.parameters())]
        direct = [n for n, _ in module.named_parameters(recurse=False)]
        offset = 1 if direct else 0
        for name, _ in module.named_parameters():
            top = name.split('.', 1)[0]
            depths[name] = children.index(top) + offset \
                if top in children else 0
        rule = 'generic stages: direct children in registration order'
    else:
        depth = -1
        for prefix, child in module.named_modules():
            own: List[str] = [n for n, _ in
                              child.named_parameters(recurse=False)]
            if not own:
                continue
            if not (isinstance(child, _NORMS) and depth >= 0):
                depth += 1
            for n in own:
                full = f'{prefix}.{n}' if prefix else n
                depths.setdefault(full, depth)
        rule = ('generic blocks: modules owning parameters in registration '
                'order, norm layers joined to the layer before them')
    # Parameters shared between modules keep their first depth; the names
    # of named_parameters() are the deduplicated ones.
    depths = {n: depths[n] for n, _ in module.named_parameters()}
    return LayerDepths(depths, max(depths.values(), default=0), rule, True)


def get_layer_depths(module: nn.Module, mode: str) -> LayerDepths:
    """Depth of every parameter of ``module`` under ``mode``.

    Args:
        module (nn.Module): The module in the rollback scope, usually the
            backbone.
        mode (str): ``'block'`` or ``'stage'``.

    Returns:
        LayerDepths: ``depths`` maps each name of
        ``module.named_parameters()`` (frozen ones included: depth is a
        property of the architecture) to its depth; ``max_depth`` is D;
        ``rule`` says which rule was used.
    """
    if mode not in ('block', 'stage'):
        raise ValueError(f"Invalid layer mode: {mode!r} (expected 'block' "
                         "or 'stage')")
    rule: Callable[[nn.Module, str], LayerDepths]
    if _is_one_of(module, _RESNETS):
        rule = _resnet
    elif _is_one_of(module, _SWINS):
        rule = _swin
    elif _is_one_of(module, _VITS):
        rule = _vit
    elif mode == 'block' and callable(getattr(module, 'get_layer_depth',
                                              None)):
        rule = _get_layer_depth
    else:
        rule = _generic
    return rule(module, mode)
