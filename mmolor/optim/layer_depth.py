# Copyright (c) mmolor contributors. All rights reserved.
"""Depth of every parameter of a backbone, for OLOR's layer-wise penalty.

Depth 0 is the stem / patch embedding; the deepest layer has depth ``D``.
One general rule serves every backbone (mmdet's, mmseg's, mmpretrain's,
timm's through ``TIMMBackbone``, and a user's own), in two steps:

1. **What a block is** is read from the module tree. A module is a
   *block candidate* when it holds two or more weight layers (modules that
   own parameters; norms and PReLUs not counted) and sits beside at least
   one other module of the same kind in the same parent (kind: the class;
   for a plain ``nn.Sequential`` / ``nn.ModuleList``, the kinds of its
   children). The blocks are the innermost candidates: a candidate that
   contains other candidates (a stage, an HRNet module) is not a block
   itself, the candidates inside it are. Every module of a candidate class
   is a block, also where it stands alone (a stage of one block; a plain
   container only where it stands beside another of its kind). A lone
   module of two or more weight layers in a plain container beside
   containers of blocks is a block too (timm EfficientNet's first stage).
   A backbone with no
   such module at all (a plain layer stack, as VGG) takes its repeated
   weight layers as blocks. In ``'stage'`` mode the unit is the module that
   holds the blocks (a block hanging directly off the backbone is a stage
   of its own).
2. **Where a block stands** is read from one forward pass of a dummy image
   (in eval mode, without touching the RNG, the weights or the norm
   statistics): a block's depth is one more than the deepest block whose
   output reaches its input through the autograd graph, so consecutive
   blocks count up and parallel branches (HRNet, BiSeNet, DDRNet, UNet's
   skip paths, ...) get equal depths at equal distance from the stem.
   Everything outside the blocks (stem, patch embeddings, downsampling
   layers, norms and position encodings between blocks, fusion layers)
   joins the deepest block run before it in the forward pass, or depth 0
   when no block ran yet. Where no forward pass can be made (an input the
   backbone does not accept, a sharded module), registration order stands
   in for the forward order and the result is marked as a fallback.

A depth scale with nothing at depth 0 (no stem) is shifted down by one.
mmpretrain's ``get_layer_depth`` is a layer-wise lr-decay grouping
(ConvNeXt-S's 36 blocks in 13 groups), not a block count; it is not used.
"""
from collections import Counter
from typing import Any, Dict, Hashable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ['LayerDepths', 'get_layer_depths', 'find_blocks', 'dummy_inputs']

_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# Modules that own parameters but are not weight layers of their own.
_NOT_WEIGHT_LAYERS = _NORMS + (nn.PReLU, )
_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList)
# Image sizes tried for the dummy forward pass, after the backbone's own
# (``img_size`` and the like): most backbones take any multiple of 32;
# a fixed position embedding wants the size it was made for.
_SIZES = (224, 256, 512, 32, 64, 128, 384, 640)


class LayerDepths(NamedTuple):
    """Depth of each parameter (by name, relative to the module)."""
    depths: Dict[str, int]
    max_depth: int
    rule: str  # how the depths were derived, for the log
    fallback: bool = False  # True when no forward pass could be made
    blocks: Tuple[str, ...] = ()  # names of the units (blocks or stages)


def _owns_weights(module: nn.Module) -> bool:
    return not isinstance(module, _NOT_WEIGHT_LAYERS) and any(
        True for _ in module.parameters(recurse=False))


def _kind(module: nn.Module) -> Hashable:
    """The class; for a plain container, the kinds of its children."""
    if isinstance(module, _PLAIN_CONTAINERS) and type(
            module).__name__ in ('Sequential', 'ModuleList'):
        return (type(module).__name__,
                tuple(_kind(m) for m in module.children()))
    return type(module)


def _weights(module: nn.Module) -> int:
    """How many weight layers (norms not counted) ``module`` holds."""
    return sum(_owns_weights(m) for m in module.modules())


def _repeated_kinds(module: nn.Module, holds) -> set:
    """Kinds of which two or more siblings hold ``holds(n)`` weights."""
    kinds = set()
    for parent in module.modules():
        counts = Counter(
            _kind(c) for c in parent.children() if holds(_weights(c)))
        kinds.update(k for k, n in counts.items() if n >= 2)
    return kinds


def find_blocks(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The blocks of ``module`` (see the module docstring), in
    registration order, as ``(name, submodule)``."""
    kinds = _repeated_kinds(module, lambda n: n >= 2)
    if not kinds:  # a plain layer stack: its repeated weight layers
        kinds = _repeated_kinds(module, lambda n: n == 1)
        return [(f'{p}.{n}' if p else n, m)
                for p, parent in module.named_modules()
                for n, m in parent.named_children()
                if _kind(m) in kinds and _weights(m) == 1 and sum(
                    _kind(c) == _kind(m) for c in parent.children()) >= 2]
    # Every module of a candidate class is a block; a plain container only
    # where it stands beside another of its kind.
    named = []
    for parent_name, parent in module.named_modules():
        counts = Counter(_kind(c) for c in parent.children())
        for n, m in parent.named_children():
            kind = _kind(m)
            if kind in kinds and (isinstance(kind, type) or counts[kind] > 1):
                named.append((f'{parent_name}.{n}' if parent_name else n, m))
    named = list(dict(named).items())
    chosen = {id(m) for _, m in named}
    inner = [(name, m) for name, m in named
             if not any(o is not m and id(o) in chosen
                        for o in m.modules())]
    # A lone block of its own kind in a stage of its own (timm
    # EfficientNet's first stage) is a block too: a module that holds two
    # or more weight layers, in a plain container beside containers that
    # hold blocks.
    names = {n for n, _ in inner}
    parents = {n.rpartition('.')[0] for n in names}
    lone = []
    for parent in {p.rpartition('.')[0] for p in parents if p}:
        holder = module.get_submodule(parent)
        for child_name, child in holder.named_children():
            path = f'{parent}.{child_name}' if parent else child_name
            if path in parents or type(child) not in _PLAIN_CONTAINERS:
                continue
            for n, m in child.named_children():
                if _weights(m) >= 2 and not any(
                        o.startswith(f'{path}.{n}.') for o in names):
                    lone.append((f'{path}.{n}', m))
    if lone:
        order = {n: i for i, (n, _) in enumerate(module.named_modules())}
        inner = sorted(inner + lone, key=lambda nm: order[nm[0]])
    return inner



def _stages(module: nn.Module,
            blocks: List[Tuple[str, nn.Module]]) -> List[Tuple[str, Any]]:
    """The modules that hold the blocks, each once, in order."""
    stages: List[Tuple[str, nn.Module]] = []
    for name, block in blocks:
        parent = name.rpartition('.')[0]
        unit = (parent, module.get_submodule(parent)) if parent else \
            (name, block)
        if unit[0] not in [s for s, _ in stages]:
            stages.append(unit)
    return stages


def _grad_nodes(obj: Any, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        if obj.grad_fn is not None:
            out.append(obj.grad_fn)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _grad_nodes(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _grad_nodes(o, out)
    return out


def dummy_inputs(module: nn.Module):
    """Dummy images for a forward pass of ``module``: its own size first.

    Yields ``(1, C, H, W)`` tensors on the module's device and dtype, one
    per channel count and size to try (the backbone's ``img_size`` or
    ``pretrain_img_size`` first, then common sizes); callers take the first
    one the module accepts.
    """
    param = next(module.parameters())
    # An image has 3 channels, unless the backbone says otherwise.
    channels = [3, getattr(module, 'in_channels', 3)] + [
        next((m.in_channels for m in module.modules()
              if isinstance(m, nn.Conv2d)), 3)]
    sizes: List[Tuple[int, int]] = []
    for m in module.modules():
        for attr in ('img_size', 'pretrain_img_size'):
            size = getattr(m, attr, None)
            if isinstance(size, int):
                size = (size, size)
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(
                    isinstance(s, int) for s in size):
                sizes.append(tuple(size))
        if sizes:
            break
    sizes += [(s, s) for s in _SIZES]
    for c in dict.fromkeys(c for c in channels if isinstance(c, int)):
        for size in dict.fromkeys(sizes):
            yield torch.randn(1, c, *size, device=param.device,
                              dtype=param.dtype, requires_grad=True)


class _Trace(NamedTuple):
    order: Dict[str, int]  # module name -> rank of its first call
    preds: Dict[str, set]  # unit -> units whose output reaches its input


def _trace(module: nn.Module, units: List[str]) -> _Trace:
    """One forward pass: call order of modules, data flow between units."""
    order: Dict[str, int] = {}
    inputs: Dict[str, list] = {}
    outputs: Dict[Any, str] = {}
    unit_set = set(units)
    handles = []

    def pre_hook(name):

        def hook(mod, args, kwargs):
            order.setdefault(name, len(order))
            if name in unit_set and name not in inputs:
                inputs[name] = _grad_nodes((args, kwargs), [])

        return hook

    def post_hook(name):

        def hook(mod, args, output):
            if name in unit_set and name not in {*outputs.values()}:
                for node in _grad_nodes(output, []):
                    outputs.setdefault(node, name)

        return hook

    training = {m: m.training for m in module.modules()}
    try:
        for name, m in module.named_modules():
            handles.append(
                m.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            if name in unit_set:
                handles.append(m.register_forward_hook(post_hook(name)))
        module.eval()
        errors = []
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            for image in dummy_inputs(module):
                order.clear(), inputs.clear(), outputs.clear()
                try:
                    module(image)
                    break
                except Exception as e:  # the next size, or the fallback
                    errors.append(f'{tuple(image.shape)}: '
                                  f'{type(e).__name__}: {e}')
            else:
                raise RuntimeError('; '.join(errors))
    finally:
        for h in handles:
            h.remove()
        for m, mode in training.items():
            m.train(mode)
    preds = {}
    for unit in units:
        found, seen = set(), set()
        stack = list(inputs.get(unit, []))
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            owner = outputs.get(node)
            if owner is not None and owner != unit:
                found.add(owner)
                continue
            stack.extend(n for n, _ in node.next_functions)
        preds[unit] = found
    return _Trace(order, preds)


def _depths_in_order(module: nn.Module, blocks: List[str], units: List[str],
                     trace: Optional[_Trace]) -> Dict[str, int]:
    """Depth of every module, from the data flow between the blocks.

    A unit (a block, or in stage mode the module holding blocks) is one
    deeper than the deepest unit that feeds one of its blocks; it takes its
    place in the forward order when its first block runs.
    """
    names = [n for n, _ in module.named_modules()]
    if trace is None:  # registration order, blocks one after the other
        order = {n: i for i, n in enumerate(names)}
        preds = {b: {blocks[i - 1]} if i else set()
                 for i, b in enumerate(blocks)}
    else:
        order, preds = trace.order, trace.preds
    unit_of = {b: _unit_of(b, units) for b in blocks}
    start: Dict[str, int] = {}
    for b in blocks:
        if b in order:
            start[unit_of[b]] = min(start.get(unit_of[b], order[b]),
                                    order[b])
    unit_depth: Dict[str, int] = {}
    for unit in sorted(units, key=lambda u: start.get(u, len(order))):
        feeding = {unit_of[p] for b in blocks if unit_of[b] == unit
                   for p in preds.get(b, ())} - {unit}
        unit_depth[unit] = 1 + max(
            (unit_depth.get(u, 0) for u in feeding), default=0)
    depth_of: Dict[str, int] = {}
    deepest = 0
    events = [(order[n], n) for n in names if n in order] + [
        (i, u) for u, i in start.items()]
    for _, name in sorted(events):
        unit = _unit_of(name, units)
        if unit is not None:
            depth_of[name] = unit_depth[unit]
            deepest = max(deepest, unit_depth[unit])
        else:
            depth_of[name] = deepest
    # Modules the forward pass never called keep the depth of the module
    # registered before them.
    last = 0
    for name in names:
        unit = _unit_of(name, units)
        if name not in depth_of:
            depth_of[name] = unit_depth.get(unit, last) if unit else last
        last = depth_of[name]
    return depth_of


def _unit_of(name: str, units: List[str]) -> Optional[str]:
    for unit in units:
        if name == unit or name.startswith(unit + '.'):
            return unit
    return None


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
        ``rule`` says how they were found; ``blocks`` names the units.
    """
    if mode not in ('block', 'stage'):
        raise ValueError(f"Invalid layer mode: {mode!r} (expected 'block' "
                         "or 'stage')")
    blocks = find_blocks(module)
    units = [n for n, _ in (blocks if mode == 'block' else _stages(
        module, blocks))]
    fallback = ''
    try:
        block_names = [n for n, _ in blocks]
        trace: Optional[_Trace] = _trace(module, block_names) \
            if blocks else None
    except Exception as e:  # no input it takes; a sharded module
        trace, fallback = None, f'{e}'[:300]
    module_depth = _depths_in_order(module, [n for n, _ in blocks], units,
                                    trace)
    depths = {}
    for prefix, m in module.named_modules():
        for n, _ in m.named_parameters(recurse=False):
            depths.setdefault(f'{prefix}.{n}' if prefix else n,
                              module_depth[prefix])
    depths = {n: depths[n] for n, _ in module.named_parameters()}
    if depths and min(depths.values()) > 0:  # no stem: start at 0
        depths = {n: d - 1 for n, d in depths.items()}
    max_depth = max(depths.values(), default=0)
    counts = Counter(type(m).__name__ for _, m in blocks)
    described = ', '.join(f'{n} x{c}' for n, c in counts.items()) or 'none'
    rule = (f'structural {mode}s ({len(units)} {mode}s; blocks: '
            f'{described}), ordered by ' +
            ('a forward pass' if trace is not None or not units else
             f'registration (no forward pass: {fallback})') +
            f', D={max_depth}')
    return LayerDepths(depths, max_depth, rule, bool(fallback), tuple(units))
