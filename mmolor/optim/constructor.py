# Copyright (c) mmolor contributors. All rights reserved.
"""OLOROptimWrapperConstructor: OLOR's layer-wise penalty as param groups."""
import copy
import inspect
import logging
import math
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                               OPTIMIZERS)
from torch import nn

from .layer_depth import get_layer_depths
from .olor import _OLORMixin, validate_rollback

__all__ = ['OLOROptimWrapperConstructor', 'rollback_by_depth']

_LAYER_MODES = ('block', 'stage', 'tensor')
# The defaults of `paramwise_cfg['rollback']`. max / min / power are the
# authors' classification setting (r_max = 0.01, r_min = 0, power 1).
_ROLLBACK_DEFAULTS: Dict[str, Any] = dict(
    max=0.01, min=0.0, power=1.0, layer='block', scope=('backbone', ))
# `paramwise_cfg` keys OLOR reads itself; the base constructor gets the rest.
_OLOR_KEYS = ('rollback', 'base_constructor')
_DEFAULT_BASE = 'DefaultOptimWrapperConstructor'
# Registries searched for an unscoped `base_constructor` that the current
# default scope does not know (e.g. a test or a script with no scope).
_CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')


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

    The param groups come from a *base constructor*,
    ``paramwise_cfg['base_constructor']`` (default mmengine's
    :class:`~mmengine.optim.DefaultOptimWrapperConstructor`, so every
    ``paramwise_cfg`` feature stays: ``custom_keys``, ``norm_decay_mult``,
    ``bias_lr_mult``, ``bypass_duplicate`` ...; or a layer-wise lr-decay
    constructor such as mmseg's ``LayerDecayOptimizerConstructor``). It
    gets every ``paramwise_cfg`` key except ``rollback`` and
    ``base_constructor``, unchanged, and its groups' parameters, lr and
    weight decay are kept exactly. OLOR then reads
    ``paramwise_cfg['rollback']`` and writes a ``rollback`` value into every
    param group:

    .. math::
        r(d) = r_{min} + (r_{max} - r_{min}) (1 - d / D)^{power}

    for a parameter at depth ``d`` of the rollback scope (0 = stem or patch
    embedding, ``D`` = the deepest layer); parameters outside the scope
    (neck, heads, anything newly initialised) get 0. A base group whose
    parameters get different rollbacks (an lr-decay constructor's group of
    a whole layer id) is split into one group per rollback value, each with
    the group's other settings. Frozen parameters (``requires_grad=False``)
    are not in the optimizer at all.

    ``paramwise_cfg['rollback']`` keys:

    - ``max`` (float): rollback of the shallowest layer, in [0, 1].
      Defaults to 0.01.
    - ``min`` (float): rollback of the deepest layer, in [0, max].
      Defaults to 0.0.
    - ``power`` (float): shape of the decay, >= 0 (1 linear; 0 a uniform
      ``max``). Defaults to 1.0.
    - ``layer`` (str): what a layer is. ``'block'``: one per residual /
      transformer block (see :func:`~mmolor.optim.get_layer_depths`);
      ``'stage'``: one per stage; ``'tensor'``: one per parameter tensor in
      registration order, the authors' rule. Defaults to ``'block'``.
    - ``scope`` (str | list[str]): the pre-trained modules that roll back,
      by attribute path (``''`` is the whole model), shallow to deep; depth
      continues from one entry to the next. Defaults to ``['backbone']``.

    ``paramwise_cfg['base_constructor']`` (str | type): a registered optim
    wrapper constructor, looked up as mmengine's ``build_optim_wrapper``
    looks up ``constructor`` (under the current default scope), else in the
    mmdet, mmseg and mmpretrain registries (a name registered by two of
    them must then be scoped: ``'mmseg.LearningRateDecayOptimizerConstructor'``
    in a script with no default scope).
    OLOR takes its groups from its ``add_params(params, model)`` and builds
    the optimizer and wrapper from its ``optimizer_cfg`` and
    ``optim_wrapper_cfg``, as mmengine's ``__call__`` does; a constructor
    that overrides ``__call__`` is refused. Defaults to
    ``'DefaultOptimWrapperConstructor'``.

    A ``paramwise_cfg`` key that no constructor in the chain reads is an
    error naming it. The base constructor gets a dict that records its
    reads (``cfg[key]``, ``get``, ``pop``, ``setdefault``, ``in``,
    attribute access; iterating over it reads every key; its ``copy()`` and
    ``copy.deepcopy`` copies record into the same record; the checks of
    mmengine's ``_validate_cfg``, which every subclass inherits, are not
    reads); a key it never read after building its groups would be
    silently ignored.

    ``custom_keys`` entries may set ``rollback`` directly (when the base
    constructor copies them into its groups, as mmengine's and mmpretrain's
    do); they win over the computed value. The constructor logs one table
    of layer id, parameter count and rollback, on rank 0.

    Example:
        >>> optim_wrapper = dict(
        >>>     type='OptimWrapper',
        >>>     constructor='OLOROptimWrapperConstructor',
        >>>     optimizer=dict(type='OLORAdamW', lr=1e-4, weight_decay=0.05),
        >>>     paramwise_cfg=dict(
        >>>         rollback=dict(max=0.01, min=0.0, power=1.0,
        >>>                       layer='block', scope=['backbone']),
        >>>         norm_decay_mult=0.0))
        >>> # Over a layer-wise lr-decay recipe (mmseg BEiT): its keys stay.
        >>> optim_wrapper = dict(
        >>>     constructor='OLOROptimWrapperConstructor',
        >>>     optimizer=dict(type='OLORAdamW', lr=3e-5, weight_decay=0.05),
        >>>     paramwise_cfg=dict(
        >>>         base_constructor='LayerDecayOptimizerConstructor',
        >>>         num_layers=12, layer_decay_rate=0.9,
        >>>         rollback=dict(max=0.01, min=0.0, power=1.0)))

    Args:
        optim_wrapper_cfg (dict): The optim wrapper config; its
            ``optimizer`` must be an OLOR optimizer when rollback is set.
        paramwise_cfg (dict, optional): The base constructor's
            ``paramwise_cfg``, plus ``rollback`` and ``base_constructor``.
            Defaults to None.
    """

    def __init__(self,
                 optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        # The base gets its own deep copy: it may change what it is given
        # (mmseg's LayerDecayOptimizerConstructor renames keys in place).
        self._base_paramwise = _ReadRecorder.of({
            k: copy.deepcopy(v)
            for k, v in self.paramwise_cfg.items() if k not in _OLOR_KEYS
        })
        self._base_keys = list(self._base_paramwise.raw())
        self.base = self._base_cls(
            optim_wrapper_cfg=copy.deepcopy(
                dict(self.optim_wrapper_cfg, optimizer=self.optimizer_cfg)),
            paramwise_cfg=self._base_paramwise)

    def _validate_cfg(self) -> None:
        # The base constructor validates its own keys when it is built.
        if not isinstance(self.paramwise_cfg, dict):
            raise TypeError('paramwise_cfg should be None or a dict, '
                            f'but got {type(self.paramwise_cfg)}')
        self._base_cls = _base_constructor_cls(
            self.paramwise_cfg.get('base_constructor', _DEFAULT_BASE))
        self.rollback_cfg = None
        if 'rollback' in self.paramwise_cfg:
            self.rollback_cfg = _parse_rollback_cfg(
                self.paramwise_cfg['rollback'])
        custom_rollback = False
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for key, options in (custom_keys.items()
                             if isinstance(custom_keys, dict) else ()):
            if isinstance(options, dict) and 'rollback' in options:
                validate_rollback(
                    options['rollback'],
                    f'paramwise_cfg.custom_keys[{key!r}].rollback')
                custom_rollback = True
        if self.rollback_cfg is not None or custom_rollback:
            self._check_optimizer_is_olor()

    def _check_optimizer_is_olor(self) -> None:
        # Here, not at the top: ZeRO's module is not the constructor's.
        from torch.distributed.optim import ZeroRedundancyOptimizer

        from .zero import local_optimizer_class
        optimizer_type = self.optimizer_cfg.get('type')
        optimizer_cls = optimizer_type
        if isinstance(optimizer_type, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_type)
        setting = f'optimizer.type={optimizer_type!r}'
        if isinstance(optimizer_cls, type) and issubclass(
                optimizer_cls, ZeroRedundancyOptimizer):
            # ZeRO shards the local optimizer named by `optimizer_type`
            # (mmengine's form; torch's own class takes `optimizer_class`).
            key = 'optimizer_type' if 'optimizer_type' in self.optimizer_cfg \
                else 'optimizer_class'
            optimizer_type = self.optimizer_cfg.get(key)
            optimizer_cls = local_optimizer_class(optimizer_type)
            setting = f'optimizer.{key}={optimizer_type!r}'
        if optimizer_cls is None:
            return  # mmengine reports unknown types when it builds
        if not (isinstance(optimizer_cls, type)
                and issubclass(optimizer_cls, _OLORMixin)):
            raise ValueError(
                'paramwise_cfg.rollback needs an OLOR optimizer (OLORAdamW, '
                f'OLORAdam, OLORSGD; or ZeroRedundancyOptimizer with '
                f"optimizer_type='OLORAdamW', ...), got {setting}")

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optim wrapper, as mmengine's constructor does, from the
        base constructor's groups with their rollback."""
        if hasattr(model, 'module'):  # DDP and the like
            model = model.module
        base = self.base
        optim_wrapper_cfg = dict(
            getattr(base, 'optim_wrapper_cfg', self.optim_wrapper_cfg))
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = dict(getattr(base, 'optimizer_cfg',
                                     self.optimizer_cfg))
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cls)
        # Some optimizers name their first argument `model_params`.
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        if not self._base_keys and self.rollback_cfg is None:
            # Nothing to group by: mmengine's shortcut, one group.
            optimizer_cfg[first_arg] = model.parameters()
        else:
            params: List[dict] = []
            self.add_params(params, model)
            optimizer_cfg[first_arg] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(
            optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Add the base constructor's param groups, then set their rollback.

        At the top call (no ``prefix``) it also checks that the base
        constructor read every ``paramwise_cfg`` key it was given.

        Args:
            params (list[dict]): The param groups, extended in place.
            module (nn.Module): The model.
            **kwargs: Passed to the base constructor's ``add_params``.
        """
        self.base.add_params(params, module, **kwargs)
        if kwargs.get('prefix'):
            return
        unread = [k for k in self._base_keys
                  if k not in self._base_paramwise.reads]
        if unread:
            raise ValueError(
                f'paramwise_cfg key(s) {unread} are read by no constructor '
                f'in the chain OLOROptimWrapperConstructor -> '
                f'{self._base_cls.__name__} (paramwise_cfg.base_constructor)'
                ': they would be silently ignored. Name the constructor '
                'that reads them (e.g. the recipe\'s own `constructor`) as '
                'paramwise_cfg.base_constructor, or remove them.')
        if self.rollback_cfg is not None:
            self._assign_rollback(params, module)

    def _assign_rollback(self, groups: List[dict], model: nn.Module) -> None:
        cfg = self.rollback_cfg
        trainable = {p for g in groups for p in g['params']}
        depth_of, max_depth, rules = _scope_depths(model, cfg['scope'],
                                                   cfg['layer'], trainable)
        rows: 'OrderedDict[Tuple, int]' = OrderedDict()
        out: List[dict] = []
        for group in groups:
            values = []
            for p in group['params']:
                depth = depth_of.get(p)
                if 'rollback' in group:  # custom_keys win
                    value = group['rollback']
                else:
                    value = 0.0 if depth is None else rollback_by_depth(
                        depth, max_depth, cfg['max'], cfg['min'],
                        cfg['power'])
                values.append(value)
                row = (depth, value)
                rows[row] = rows.get(row, 0) + p.numel()
            out.extend(_split_by_rollback(group, values))
        groups[:] = out
        if get_rank() == 0:
            _log_table(rows, max_depth, rules, cfg, self._base_cls.__name__)


def _split_by_rollback(group: dict, values: List[float]) -> List[dict]:
    """``group`` with ``rollback`` set; one group per distinct value.

    Each part keeps the group's other settings. A list with one entry per
    parameter (mmseg's ``param_names``) is split along with the params.
    """
    params = list(group['params'])
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 1:
        group['rollback'] = distinct[0] if distinct else \
            group.get('rollback', 0.0)
        return [group]
    parallel = [
        k for k, v in group.items()
        if k != 'params' and isinstance(v, list) and len(v) == len(params)
    ]
    parts = []
    for value in distinct:
        index = [i for i, v in enumerate(values) if v == value]
        part = dict(group, params=[params[i] for i in index],
                    rollback=value)
        for key in parallel:
            part[key] = [group[key][i] for i in index]
        parts.append(part)
    return parts


# mmengine's DefaultOptimWrapperConstructor._validate_cfg, which every
# subclass runs, looks at `custom_keys` and the decay mults whether or not
# the subclass ever uses them (mmseg's lr-decay constructors do not): its
# looks are not reads.
_MMENGINE_VALIDATION = DefaultOptimWrapperConstructor._validate_cfg.__code__


class _ReadRecorder(dict):
    """A ``paramwise_cfg`` that records which of its keys are read.

    Reads: ``cfg[key]``, ``get``, ``pop``, ``setdefault``, ``key in cfg``
    and ``cfg.key``, except from mmengine's
    ``DefaultOptimWrapperConstructor._validate_cfg``. Iterating
    (``keys()``, ``items()``, ``dict(cfg)``, ``{**cfg}``) reads every key.
    ``copy()``, ``copy.copy`` and ``copy.deepcopy`` give recorders that add
    to the same record. Writes are not reads.
    """
    reads: Set[Any]

    @classmethod
    def of(cls,
           items: dict,
           reads: Optional[Set[Any]] = None) -> '_ReadRecorder':
        recorder = cls(items)
        recorder.reads = set() if reads is None else reads
        return recorder

    def raw(self) -> Dict[Any, Any]:
        """The items, without recording a read."""
        return {k: dict.__getitem__(self, k) for k in dict.keys(self)}

    def _read_all(self) -> None:
        self.reads.update(dict.keys(self))

    def _read(self, key: Any) -> None:
        # Frame 2: whoever called the dict method that called this.
        if sys._getframe(2).f_code is not _MMENGINE_VALIDATION:
            self.reads.add(key)

    def __getitem__(self, key: Any) -> Any:
        self._read(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._read(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self._read(key)
        return super().__contains__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._read(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._read(key)
        return super().setdefault(key, default)

    def __getattr__(self, key: str) -> Any:
        # ConfigDict-style `cfg.num_layers`; only called for missing
        # attributes, so `reads` and the methods never come here.
        if key.startswith('__') or key == 'reads':
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"'paramwise_cfg' has no key {key!r}") from None

    def __iter__(self):
        self._read_all()
        return super().__iter__()

    def keys(self):  # type: ignore[override]
        self._read_all()
        return super().keys()

    def values(self):  # type: ignore[override]
        self._read_all()
        return super().values()

    def items(self):  # type: ignore[override]
        self._read_all()
        return super().items()

    def copy(self) -> '_ReadRecorder':
        return _ReadRecorder.of(self.raw(), self.reads)

    def __copy__(self) -> '_ReadRecorder':
        return self.copy()

    def __deepcopy__(self, memo: dict) -> '_ReadRecorder':
        return _ReadRecorder.of(copy.deepcopy(self.raw(), memo), self.reads)


def _base_constructor_cls(value: Any) -> type:
    """The class that ``paramwise_cfg['base_constructor']`` names."""
    if isinstance(value, str):
        cls = _lookup_constructor(value)
    elif isinstance(value, type):
        cls = value
    else:
        raise TypeError(
            f'Invalid paramwise_cfg.base_constructor: {value!r} (expected '
            'the name of a registered optim wrapper constructor, or a class)')
    if issubclass(cls, OLOROptimWrapperConstructor):
        raise ValueError(
            f'Invalid paramwise_cfg.base_constructor: {value!r} (OLOR '
            'cannot be its own base; name the constructor that builds the '
            'param groups)')
    if not callable(getattr(cls, 'add_params', None)):
        raise TypeError(
            f'Invalid paramwise_cfg.base_constructor: {value!r} ({cls!r} '
            'has no add_params(params, module) to build param groups with)')
    call = next((klass.__dict__['__call__'] for klass in cls.__mro__
                 if '__call__' in klass.__dict__), None)
    if call not in (None, DefaultOptimWrapperConstructor.__call__):
        raise TypeError(
            f'Invalid paramwise_cfg.base_constructor: {value!r} ('
            f'{cls.__name__} overrides __call__, which OLOR would bypass: '
            'OLOR takes the groups from add_params(params, model) and builds '
            'the optimizer as DefaultOptimWrapperConstructor.__call__ does)')
    return cls


def _registry_get(registry: Any, name: str) -> Optional[type]:
    try:
        return registry.get(name)
    except (RuntimeError, ImportError, KeyError, AttributeError):
        return None


def _lookup_constructor(name: str) -> type:
    """A constructor by name: as mmengine builds ``constructor`` (current
    default scope, then its parents), else in the codebases' registries."""
    with OPTIM_WRAPPER_CONSTRUCTORS.switch_scope_and_registry(
            None) as registry:
        cls = _registry_get(registry, name)
    if isinstance(cls, type):
        return cls
    found: Dict[type, str] = {}
    if '.' not in name:
        for scope in _CODEBASES:
            cls = _registry_get(OPTIM_WRAPPER_CONSTRUCTORS, f'{scope}.{name}')
            if isinstance(cls, type):
                found.setdefault(cls, f'{scope}.{name}')
    if len(found) == 1:
        return next(iter(found))
    if found:
        raise ValueError(
            f'Invalid paramwise_cfg.base_constructor: {name!r} is ambiguous '
            f'without a default scope: write one of {sorted(found.values())}')
    raise ValueError(
        f'Invalid paramwise_cfg.base_constructor: {name!r} (no optim wrapper '
        f'constructor of that name is registered, in the current scope or in '
        f'{list(_CODEBASES)})')


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
               cfg: Dict[str, Any], base: str) -> None:
    lines = [
        f"OLOR rollback: max={cfg['max']}, min={cfg['min']}, "
        f"power={cfg['power']}, layer={cfg['layer']!r}, "
        f"scope={cfg['scope']}, D={max_depth}", f'  param groups: {base}'
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
