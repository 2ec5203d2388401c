# Copyright (c) mmolor contributors. All rights reserved.
"""OLOROptimWrapperConstructor: OLOR's layer-wise penalty as param groups."""
import logging
import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from torch import nn

from .layer_depth import get_layer_depths
from .olor import _OLORMixin, validate_rollback

__all__ = ['OLOROptimWrapperConstructor', 'rollback_by_depth']

_LAYER_MODES = ('block', 'stage', 'tensor')
# The defaults of `paramwise_cfg['rollback']`. max / min / power are the
# authors' classification setting (r_max = 0.01, r_min = 0, power 1).
_ROLLBACK_DEFAULTS: Dict[str, Any] = dict(
    max=0.01, min=0.0, power=1.0, layer='block', scope=('backbone', ))


def rollback_by_depth(depth: int, max_depth: int, r_max: float, r_min: float,
                      power: float) -> float:
    """OLOR's penalty decay: ``r_min + (r_max - r_min) (1 - d / D) ** power``.

    ``D == 0`` (a single layer) gives ``r_max``; ``power == 0`` gives
    ``r_max`` everywhere.
    """
    if max_depth == 0:
        return r_max
    return r_min + (r_max - r_min) * (1 - depth / max_depth)**power


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class OLOROptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build an OLOR optimizer whose rollback falls with depth.

    A :class:`~mmengine.optim.DefaultOptimWrapperConstructor` (every
    ``paramwise_cfg`` feature stays: ``custom_keys``, ``norm_decay_mult``,
    ``bias_lr_mult``, ``bypass_duplicate`` ...) that also reads
    ``paramwise_cfg['rollback']`` and writes a ``rollback`` value into every
    param group:

    .. math::
        r(d) = r_{min} + (r_{max} - r_{min}) (1 - d / D)^{power}

    for a parameter at depth ``d`` of the rollback scope (0 = stem or patch
    embedding, ``D`` = the deepest layer); parameters outside the scope
    (neck, heads, anything newly initialised) get 0. Frozen parameters
    (``requires_grad=False``) are not in the optimizer at all.

    ``paramwise_cfg['rollback']`` keys:

    - ``max`` (float): rollback of the shallowest layer, in [0, 1].
      Defaults to 0.01.
    - ``min`` (float): rollback of the deepest layer, in [0, max].
      Defaults to 0.0.
    - ``power`` (float): shape of the decay, >= 0 (1 linear; 0 a uniform
      ``max``). Defaults to 1.0.
    - ``layer`` (str): what a layer is. ``'block'``: one per residual /
      transformer block (ResNet/ResNeXt, Swin, ViT/BEiT/MAE of mmdet and
      mmseg, and any backbone with ``get_layer_depth``; other modules use a
      logged generic rule); ``'stage'``: one per stage; ``'tensor'``: one
      per parameter tensor in registration order, the authors' rule.
      Defaults to ``'block'``.
    - ``scope`` (str | list[str]): the pre-trained modules that roll back,
      by attribute path (``''`` is the whole model), shallow to deep; depth
      continues from one entry to the next. Defaults to ``['backbone']``.

    ``custom_keys`` entries may set ``rollback`` directly; they win over the
    computed value. The constructor logs one table of layer id, parameter
    count and rollback, on rank 0.

    Example:
        >>> optim_wrapper = dict(
        >>>     type='OptimWrapper',
        >>>     constructor='OLOROptimWrapperConstructor',
        >>>     optimizer=dict(type='OLORAdamW', lr=1e-4, weight_decay=0.05),
        >>>     paramwise_cfg=dict(
        >>>         rollback=dict(max=0.01, min=0.0, power=1.0,
        >>>                       layer='block', scope=['backbone']),
        >>>         norm_decay_mult=0.0))

    Args:
        optim_wrapper_cfg (dict): The optim wrapper config; its
            ``optimizer`` must be an OLOR optimizer when rollback is set.
        paramwise_cfg (dict, optional): As for
            :class:`~mmengine.optim.DefaultOptimWrapperConstructor`, plus
            ``rollback``. Defaults to None.
    """

    def _validate_cfg(self) -> None:
        super()._validate_cfg()
        self.rollback_cfg = None
        if 'rollback' in self.paramwise_cfg:
            self.rollback_cfg = _parse_rollback_cfg(
                self.paramwise_cfg['rollback'])
        custom_rollback = False
        for key, options in self.paramwise_cfg.get('custom_keys',
                                                   {}).items():
            if isinstance(options, dict) and 'rollback' in options:
                validate_rollback(
                    options['rollback'],
                    f'paramwise_cfg.custom_keys[{key!r}].rollback')
                custom_rollback = True
        if self.rollback_cfg is not None or custom_rollback:
            self._check_optimizer_is_olor()

    def _check_optimizer_is_olor(self) -> None:
        optimizer_type = self.optimizer_cfg.get('type')
        optimizer_cls = optimizer_type
        if isinstance(optimizer_type, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_type)
        if optimizer_cls is None:
            return  # mmengine reports unknown types when it builds
        if not (isinstance(optimizer_cls, type)
                and issubclass(optimizer_cls, _OLORMixin)):
            raise ValueError(
                'paramwise_cfg.rollback needs an OLOR optimizer (OLORAdamW, '
                f'OLORAdam, OLORSGD), got optimizer.type={optimizer_type!r}')

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Any] = None) -> None:
        """Add param groups as mmengine does, then set their rollback.

        mmengine recurses through the modules with a prefix; the rollback is
        assigned once, on the finished list, at the top call.
        """
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix == '' and self.rollback_cfg is not None:
            self._assign_rollback(params, module)

    def _assign_rollback(self, groups: List[dict], model: nn.Module) -> None:
        cfg = self.rollback_cfg
        trainable = {p for g in groups for p in g['params']}
        depth_of, max_depth, rules = _scope_depths(model, cfg['scope'],
                                                   cfg['layer'], trainable)
        rows: 'OrderedDict[Tuple, int]' = OrderedDict()
        for group in groups:
            for p in group['params']:
                depth = depth_of.get(p)
                if 'rollback' not in group:  # custom_keys win
                    group['rollback'] = 0.0 if depth is None else \
                        rollback_by_depth(depth, max_depth, cfg['max'],
                                          cfg['min'], cfg['power'])
                row = (depth, group['rollback'])
                rows[row] = rows.get(row, 0) + p.numel()
        if get_rank() == 0:
            _log_table(rows, max_depth, rules, cfg)


def _parse_rollback_cfg(cfg: Any) -> Dict[str, Any]:
    """Validate ``paramwise_cfg['rollback']`` and fill its defaults."""
    if not isinstance(cfg, dict):
        raise TypeError('paramwise_cfg.rollback must be a dict with keys '
                        f'{sorted(_ROLLBACK_DEFAULTS)}, got {cfg!r}')
    unknown = sorted(set(cfg) - set(_ROLLBACK_DEFAULTS))
    if unknown:
        raise ValueError(f'Unknown key(s) in paramwise_cfg.rollback: '
                         f'{unknown} (allowed: {sorted(_ROLLBACK_DEFAULTS)})')
    cfg = {**_ROLLBACK_DEFAULTS, **cfg}
    for key in ('max', 'min'):
        cfg[key] = validate_rollback(cfg[key], f'paramwise_cfg.rollback.{key}')
    if cfg['min'] > cfg['max']:
        raise ValueError(f"Invalid paramwise_cfg.rollback.min: {cfg['min']} "
                         f"(must not exceed max: {cfg['max']})")
    power = cfg['power']
    if isinstance(power, bool) or not isinstance(power, (int, float)):
        raise TypeError(f'Invalid paramwise_cfg.rollback.power: {power!r} '
                        '(expected a float >= 0)')
    if not (power >= 0 and math.isfinite(power)):
        raise ValueError(f'Invalid paramwise_cfg.rollback.power: {power} '
                         '(must be a finite float >= 0)')
    if cfg['layer'] not in _LAYER_MODES:
        raise ValueError(f"Invalid paramwise_cfg.rollback.layer: "
                         f"{cfg['layer']!r} (expected one of {_LAYER_MODES})")
    scope = cfg['scope']
    if isinstance(scope, str):
        scope = [scope]
    if not isinstance(scope, (list, tuple)) or not all(
            isinstance(s, str) for s in scope):
        raise TypeError('Invalid paramwise_cfg.rollback.scope: '
                        f'{cfg["scope"]!r} (expected a str or a list of str)')
    if not scope:
        raise ValueError('Invalid paramwise_cfg.rollback.scope: [] (name at '
                         "least one module, e.g. ['backbone'])")
    cfg['scope'] = list(scope)
    return cfg


def _scope_depths(model: nn.Module, scope: Sequence[str], layer: str,
                  trainable: set) -> Tuple[Dict[Any, int], int, List[str]]:
    """Depth of every trainable parameter in the scope, and ``D``.

    Scope entries are stacked shallow to deep: the depths of an entry start
    one after the deepest layer of the entry before it.
    """
    depth_of: Dict[Any, int] = {}
    rules: List[str] = []
    offset = 0
    for entry in scope:
        try:
            module = model.get_submodule(entry)
        except AttributeError:
            top = [n for n, _ in model.named_children()]
            raise ValueError(
                f'Invalid paramwise_cfg.rollback.scope entry {entry!r}: '
                f'{type(model).__name__} has no such module (top-level '
                f'modules: {top})') from None
        named = [(n, p) for n, p in module.named_parameters()
                 if p in trainable]
        if not named:
            raise ValueError(
                f'Invalid paramwise_cfg.rollback.scope entry {entry!r}: it '
                'matches no trainable parameter (all frozen or none)')
        if any(p in depth_of for _, p in named):
            raise ValueError(
                f'Invalid paramwise_cfg.rollback.scope entry {entry!r}: it '
                f'overlaps an earlier entry of {list(scope)}')
        if layer == 'tensor':
            depths = {n: i for i, (n, _) in enumerate(named)}
            entry_max = len(named) - 1
            rules.append(f'{entry or "<model>"}: parameter tensors in '
                         f'registration order (0..{entry_max})')
        else:
            found = get_layer_depths(module, layer)
            depths, entry_max = found.depths, found.max_depth
            rules.append(f'{entry or "<model>"}: {found.rule}')
            if found.fallback:
                rules[-1] += (f' (no forward pass through '
                              f'{type(module).__name__}: depths guessed from '
                              f'registration order: '
                              f'{_describe_order(depths)})')
        for n, p in named:
            depth_of[p] = depths[n] + offset
        offset += entry_max + 1
    return depth_of, offset - 1, rules


def _describe_order(depths: Dict[str, int], per_layer: int = 3) -> str:
    """``'0: conv1, bn1; 1: layer.0.conv, ...'`` from parameter names."""
    owners: Dict[int, List[str]] = {}
    for name, depth in depths.items():
        owner = name.rpartition('.')[0] or name
        if owner not in owners.setdefault(depth, []):
            owners[depth].append(owner)
    return '; '.join(
        f'{d}: ' + ', '.join(o[:per_layer]) + (', ...' if len(o) > per_layer
                                                else '')
        for d, o in sorted(owners.items()))


def _log_table(rows: Dict[Tuple, int], max_depth: int, rules: List[str],
               cfg: Dict[str, Any]) -> None:
    lines = [
        f"OLOR rollback: max={cfg['max']}, min={cfg['min']}, "
        f"power={cfg['power']}, layer={cfg['layer']!r}, "
        f"scope={cfg['scope']}, D={max_depth}"
    ] + [f'  depth rule: {r}' for r in rules]
    lines.append(f"  {'layer id':>8} | {'params':>12} | rollback")
    in_scope = sorted((k for k in rows if k[0] is not None),
                      key=lambda k: (k[0], k[1]))
    for depth, rollback in in_scope:
        lines.append(f'  {depth:>8} | {rows[(depth, rollback)]:>12,} | '
                     f'{rollback:.6g}')
    for key in (k for k in rows if k[0] is None):
        lines.append(f"  {'outside':>8} | {rows[key]:>12,} | {key[1]:.6g}")
    # The generic rule is a guess about an unknown backbone: say so loudly.
    level = logging.WARNING if any('no forward pass' in r for r in rules) \
        else logging.INFO
    print_log('\n'.join(lines), logger='current', level=level)
