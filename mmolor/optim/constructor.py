# Copyright (c) mmolor contributors. All rights reserved.
"""OLOROptimWrapperConstructor: OLOR's layer-wise penalty as param groups."""
import copy
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.optim import Optimizer

from ..version import require_scope
from .layer_depth import get_layer_depths
from .olor import (OLORAdam, OLORAdamW, OLORSGD, validate_l2sp,
                   validate_review, validate_rollback)

__all__ = [
    'OLOROptimWrapperConstructor', 'rollback_by_depth', 'validate_scope',
    'local_optimizer_class'
]

_LAYER_MODES = ('block', 'stage', 'tensor')
# The defaults of `paramwise_cfg['rollback']`. max / min / power are the
# authors' classification setting (r_max = 0.01, r_min = 0, power 1).
_ROLLBACK_DEFAULTS: Dict[str, Any] = dict(
    max=0.01,
    min=0.0,
    power=1.0,
    layer='block',
    scope=('backbone', ),
    review='olor')
# The keys of `paramwise_cfg['l2sp']`; `alpha` has no default.
_L2SP_KEYS = ('alpha', 'scope')
# `paramwise_cfg` keys OLOR reads itself; the base constructor gets the rest.
_OLOR_KEYS = ('rollback', 'l2sp', 'base_constructor')
# Group keys that `custom_keys` entries may set directly (they win).
_GROUP_KEYS = dict(
    rollback=validate_rollback, review=validate_review, l2sp=validate_l2sp)
_DEFAULT_BASE = 'DefaultOptimWrapperConstructor'
# Registries searched for an unscoped `base_constructor` that the current
# default scope does not know (e.g. a test or a script with no scope).
_CODEBASES = ('mmdet', 'mmseg', 'mmpretrain')
# The optim wrapper constructors those codebases register: a name of one
# that is not found asks for the extra that installs its codebase.
_CODEBASE_CONSTRUCTORS = (
    'mmdet.LearningRateDecayOptimizerConstructor',
    'mmseg.LearningRateDecayOptimizerConstructor',
    'mmseg.LayerDecayOptimizerConstructor',
    'mmseg.ForceDefaultOptimWrapperConstructor',
    'mmpretrain.LearningRateDecayOptimWrapperConstructor',
)
# The `paramwise_cfg` keys that each known base constructor reads (from its
# `add_params` and `__init__`), by `codebase.ClassName`. A class matches
# only itself: a subclass may read other keys.
_BASE_KEYS: Dict[str, Tuple[str, ...]] = {
    'mmengine.DefaultOptimWrapperConstructor':
    ('custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult',
     'dwconv_decay_mult', 'flat_decay_mult', 'dcn_offset_lr_mult',
     'bypass_duplicate'),
    'mmseg.LearningRateDecayOptimizerConstructor':
    ('num_layers', 'decay_rate', 'decay_type'),
    # It overwrites `decay_rate` (with `layer_decay_rate`) and `decay_type`.
    'mmseg.LayerDecayOptimizerConstructor': ('num_layers', 'layer_decay_rate'),
    'mmdet.LearningRateDecayOptimizerConstructor':
    ('num_layers', 'decay_rate', 'decay_type'),
    'mmpretrain.LearningRateDecayOptimWrapperConstructor':
    ('custom_keys', 'bias_decay_mult', 'norm_decay_mult', 'flat_decay_mult',
     'layer_decay_rate'),
}


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
    weight decay are kept exactly: this constructor's ``add_params`` calls
    the base constructor's, then writes a ``rollback`` value into every
    param group, from ``paramwise_cfg['rollback']``:

    .. math::
        r(d) = r_{min} + (r_{max} - r_{min}) (1 - d / D)^{power}

    for a parameter at depth ``d`` of the rollback scope (0 = stem or patch
    embedding, ``D`` = the deepest layer); parameters outside the scope
    (neck, heads, anything newly initialised) get 0. A base group whose
    parameters get different rollbacks (an lr-decay constructor's group of
    a whole layer id) is split into one group per rollback value, each with
    the group's other settings. Frozen parameters (``requires_grad=False``)
    are not in the optimizer at all. The optimizer and the wrapper are
    built by mmengine's ``__call__``.

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
    - ``review`` (str): the review rule of the groups in the scope,
      ``'olor'`` (the paper's) or ``'spd'`` (Selective Projection Decay's
      selective review, see :class:`~mmolor.optim.OLORAdamW`). Defaults to
      ``'olor'``.

    ``paramwise_cfg['l2sp']`` (L2-SP, Li et al. 2018: the gradient of
    ``alpha / 2 * ||theta - theta_0||^2`` added to every parameter of the
    scope, with the same anchors as the review) keys:

    - ``alpha`` (float): the weight, >= 0. Required.
    - ``scope`` (str | list[str]): as the rollback's. Defaults to
      ``['backbone']``.

    It works with or without ``rollback``.

    ``paramwise_cfg['base_constructor']`` (str | type): a registered optim
    wrapper constructor, looked up as mmengine's ``build_optim_wrapper``
    looks up ``constructor`` (under the current default scope), else in the
    mmdet, mmseg and mmpretrain registries (a name registered by two of
    them must then be scoped: ``'mmseg.LearningRateDecayOptimizerConstructor'``
    in a script with no default scope). A name that one of those codebases
    registers, where the codebase is not installed, raises
    :class:`~mmolor.version.MissingExtraError` naming the extra to install
    (``mmolor[seg]``). Only its ``add_params`` is used, so a constructor
    that overrides ``__call__`` is refused. Defaults to
    ``'DefaultOptimWrapperConstructor'``.

    The ``paramwise_cfg`` keys that mmengine's default constructor and the
    lr-decay constructors of mmseg, mmdet and mmpretrain read are known: a
    key that such a base does not read would be silently ignored, and is an
    error naming it. Any other base constructor (a subclass of one of them
    too) gets its keys unchecked, and says so in one log line.

    ``custom_keys`` entries may set ``rollback``, ``review`` and ``l2sp``
    directly (when the base constructor copies them into its groups, as
    mmengine's and mmpretrain's do); they win over the computed values. The constructor logs one table
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
        >>> # SPD's selective review with OLOR's depth profile; or L2-SP.
        >>> paramwise_cfg = dict(rollback=dict(max=0.01, review='spd'))
        >>> paramwise_cfg = dict(l2sp=dict(alpha=0.01, scope=['backbone']))
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
        # Deep copies: a base may change what it is given (mmseg's
        # LayerDecayOptimizerConstructor renames keys in place).
        self.base = self.base_cls(
            optim_wrapper_cfg=copy.deepcopy(
                dict(self.optim_wrapper_cfg, optimizer=self.optimizer_cfg)),
            paramwise_cfg={
                k: copy.deepcopy(v)
                for k, v in self.paramwise_cfg.items() if k not in _OLOR_KEYS
            })

    def _validate_cfg(self) -> None:
        # The base constructor validates its own keys when it is built.
        if not isinstance(self.paramwise_cfg, dict):
            raise TypeError('paramwise_cfg should be None or a dict, '
                            f'but got {type(self.paramwise_cfg)}')
        self.base_cls = _base_constructor_cls(
            self.paramwise_cfg.get('base_constructor', _DEFAULT_BASE))
        _check_base_keys(
            self.base_cls,
            [k for k in self.paramwise_cfg if k not in _OLOR_KEYS])
        self.rollback_cfg = None
        if 'rollback' in self.paramwise_cfg:
            self.rollback_cfg = _parse_rollback_cfg(
                self.paramwise_cfg['rollback'])
        self.l2sp_cfg = None
        if 'l2sp' in self.paramwise_cfg:
            self.l2sp_cfg = _parse_l2sp_cfg(self.paramwise_cfg['l2sp'])
        custom = []
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for key, options in (custom_keys.items()
                             if isinstance(custom_keys, dict) else ()):
            for name, validate in _GROUP_KEYS.items():
                if isinstance(options, dict) and name in options:
                    validate(options[name],
                             f'paramwise_cfg.custom_keys[{key!r}].{name}')
                    custom.append(f'custom_keys[{key!r}].{name}')
        if self.rollback_cfg is not None or self.l2sp_cfg is not None \
                or custom:
            _check_olor_optimizer(self.optimizer_cfg)

    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Add the base constructor's param groups, with their rollback.

        Args:
            params (list[dict]): The param groups, extended in place.
            module (nn.Module): The model.
            **kwargs: Passed to the base constructor's ``add_params``.
        """
        self.base.add_params(params, module, **kwargs)
        if self.rollback_cfg is not None or self.l2sp_cfg is not None:
            params[:] = self._with_olor_keys(params, module)

    def _with_olor_keys(self, groups: List[dict],
                        model: nn.Module) -> List[dict]:
        """The groups with ``rollback`` / ``review`` (from
        ``paramwise_cfg.rollback``) and ``l2sp`` (from
        ``paramwise_cfg.l2sp``) set per parameter, split where they
        differ."""
        cfg, l2sp_cfg = self.rollback_cfg, self.l2sp_cfg
        trainable = {p for g in groups for p in g['params']}
        depth_of: Dict[Any, int] = {}
        if cfg is not None:
            depth_of, max_depth, rules = _scope_depths(
                model, cfg['scope'], cfg['layer'], trainable)
        l2sp_scope: Dict[Any, int] = {}
        if l2sp_cfg is not None:
            l2sp_scope = _scope_depths(model, l2sp_cfg['scope'], 'tensor',
                                       trainable, 'paramwise_cfg.l2sp')[0]
        numel: Dict[Tuple, int] = {}  # (depth, rollback) -> parameter count
        out: List[dict] = []
        for group in groups:
            values = []
            for p in group['params']:
                value = {}
                if cfg is not None:
                    depth = depth_of.get(p)
                    value['rollback'] = 0.0 if depth is None else \
                        rollback_by_depth(depth, max_depth, cfg['max'],
                                          cfg['min'], cfg['power'])
                    value['review'] = cfg['review']
                if l2sp_cfg is not None:
                    value['l2sp'] = l2sp_cfg['alpha'] if p in l2sp_scope \
                        else 0.0
                value.update(  # custom_keys win
                    (k, group[k]) for k in _GROUP_KEYS if k in group)
                values.append(value)
                if cfg is not None:
                    key = (depth, value['rollback'])
                    numel[key] = numel.get(key, 0) + p.numel()
            out.extend(_split_by_values(group, values))
        if get_rank() == 0:
            if cfg is not None:
                _log_table(numel, max_depth, rules, cfg,
                           self.base_cls.__name__)
            if l2sp_cfg is not None:
                count = sum(p.numel() for p in l2sp_scope)
                print_log(
                    f"OLOR L2-SP: alpha={l2sp_cfg['alpha']} on "
                    f"{l2sp_cfg['scope']} ({count:,} parameters)",
                    logger='current')
        return out


def _split_by_values(group: dict, values: List[Dict[str, Any]]) -> List[dict]:
    """``group`` with the keys of ``values`` (one dict per parameter) set;
    one group per distinct set of values.

    Each part keeps the group's other settings. A list with one entry per
    parameter (mmseg's ``param_names``) is split along with the params.
    """
    params = list(group['params'])
    keys = [tuple(sorted(v.items())) for v in values]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) <= 1:
        group.update(distinct[0] if distinct else {})
        return [group]
    parallel = [
        k for k, v in group.items()
        if k != 'params' and isinstance(v, list) and len(v) == len(params)
    ]
    parts = []
    for value in distinct:
        index = [i for i, v in enumerate(keys) if v == value]
        part = dict(group, params=[params[i] for i in index], **dict(value))
        for key in parallel:
            part[key] = [group[key][i] for i in index]
        parts.append(part)
    return parts


def _check_base_keys(base_cls: type, keys: List[str]) -> None:
    """Refuse a key the base constructor does not read (if it is known)."""
    name = f"{base_cls.__module__.partition('.')[0]}.{base_cls.__name__}"
    if name not in _BASE_KEYS:
        if keys:
            print_log(
                f'OLOR: paramwise_cfg key(s) {keys} go to {name} '
                '(paramwise_cfg.base_constructor) unchecked: a key it does '
                'not read is ignored silently', logger='current')
        return
    unread = [k for k in keys if k not in _BASE_KEYS[name]]
    if unread:
        raise ValueError(
            f'paramwise_cfg key(s) {unread} are read by no constructor in '
            f'the chain OLOROptimWrapperConstructor -> {base_cls.__name__} '
            '(paramwise_cfg.base_constructor): they would be silently '
            'ignored. Name the constructor that reads them (e.g. the '
            "recipe's own `constructor`) as paramwise_cfg.base_constructor, "
            'or remove them.')


def local_optimizer_class(
        optimizer_type: Union[str, Type[Optimizer]]) -> Optional[type]:
    """The class that ZeRO's ``optimizer_type`` names, or None if unknown.

    A class is returned as it is; a name is looked up in ``torch.optim``
    (mmengine's own rule), then in the ``OPTIMIZERS`` registry under the
    current default scope (which falls back to mmengine's root registry,
    where mmolor registers its optimizers).

    Args:
        optimizer_type (str | type): The ``optimizer_type`` of a
            ``ZeroRedundancyOptimizer`` config.

    Returns:
        type, optional: The local optimizer's class, or None.
    """
    if isinstance(optimizer_type, type):
        return optimizer_type
    if not isinstance(optimizer_type, str):
        return None
    optimizer_cls = getattr(torch.optim, optimizer_type, None)
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls,
                                                      Optimizer):
        return optimizer_cls
    with OPTIMIZERS.switch_scope_and_registry(None) as registry:
        return registry.get(optimizer_type)


def _check_olor_optimizer(optimizer_cfg: dict) -> None:
    """Refuse a rollback setting for an optimizer that is not OLOR's."""
    optimizer_type = optimizer_cfg.get('type')
    optimizer_cls = optimizer_type
    if isinstance(optimizer_type, str):
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            optimizer_cls = registry.get(optimizer_type)
    setting = f'optimizer.type={optimizer_type!r}'
    if isinstance(optimizer_cls, type) and issubclass(
            optimizer_cls, ZeroRedundancyOptimizer):
        # ZeRO shards the local optimizer named by `optimizer_type`
        # (mmengine's form; torch's own class takes `optimizer_class`).
        key = 'optimizer_type' if 'optimizer_type' in optimizer_cfg \
            else 'optimizer_class'
        optimizer_type = optimizer_cfg.get(key)
        optimizer_cls = local_optimizer_class(optimizer_type)
        setting = f'optimizer.{key}={optimizer_type!r}'
    if optimizer_cls is None:
        return  # mmengine reports unknown types when it builds
    if not (isinstance(optimizer_cls, type)
            and issubclass(optimizer_cls, (OLORAdamW, OLORAdam, OLORSGD))):
        raise ValueError(
            'paramwise_cfg.rollback (or .l2sp) needs an OLOR '
            'optimizer (OLORAdamW, OLORAdam, OLORSGD; or '
            "ZeroRedundancyOptimizer with optimizer_type='OLORAdamW', ...), "
            f'got {setting}')


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
            'the optimizer with DefaultOptimWrapperConstructor.__call__)')
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
    _require_codebase_of(name)
    raise ValueError(
        f'Invalid paramwise_cfg.base_constructor: {name!r} (no optim wrapper '
        f'constructor of that name is registered, in the current scope or in '
        f'{list(_CODEBASES)})')


def _require_codebase_of(name: str) -> None:
    """Raise :class:`~mmolor.version.MissingExtraError`, naming the extra to
    install, when the constructor ``name`` (not found) is one that a codebase
    which is not installed registers, or is scoped with such a codebase."""
    needed_by = f'paramwise_cfg.base_constructor={name!r}'
    scope, _, short = name.rpartition('.')
    for qualified in _CODEBASE_CONSTRUCTORS:
        codebase, _, cls_name = qualified.partition('.')
        if cls_name == short and scope in ('', codebase):
            require_scope(codebase, needed_by)
    if scope:
        require_scope(scope, needed_by)


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
    cfg['review'] = validate_review(cfg['review'],
                                    'paramwise_cfg.rollback.review')
    cfg['scope'] = validate_scope(cfg['scope'],
                                  'paramwise_cfg.rollback.scope')
    return cfg


def _parse_l2sp_cfg(cfg: Any) -> Dict[str, Any]:
    """Validate ``paramwise_cfg['l2sp']`` and fill its defaults."""
    if not isinstance(cfg, dict) or 'alpha' not in cfg:
        raise TypeError('paramwise_cfg.l2sp must be a dict with keys '
                        f"{list(_L2SP_KEYS)} ('alpha' required), got {cfg!r}")
    unknown = sorted(set(cfg) - set(_L2SP_KEYS))
    if unknown:
        raise ValueError(f'Unknown key(s) in paramwise_cfg.l2sp: {unknown} '
                         f'(allowed: {list(_L2SP_KEYS)})')
    return dict(
        alpha=validate_l2sp(cfg['alpha'], 'paramwise_cfg.l2sp.alpha'),
        scope=validate_scope(
            cfg.get('scope', _ROLLBACK_DEFAULTS['scope']),
            'paramwise_cfg.l2sp.scope'))


def validate_scope(scope: Any, name: str = 'scope') -> List[str]:
    """Check a scope (the pre-trained modules, by attribute path in the
    model, ``''`` the whole model) and return it as a list of paths.

    Args:
        scope (str | list[str] | tuple[str]): One path or several.
        name (str): The setting's name in the messages. Defaults to
            ``'scope'``.

    Returns:
        list[str]: The paths.

    Raises:
        TypeError: ``scope`` is not a str nor a list or tuple of str.
        ValueError: ``scope`` is empty.
    """
    if isinstance(scope, str):
        scope = [scope]
    if not isinstance(scope, (list, tuple)) or not all(
            isinstance(s, str) for s in scope):
        raise TypeError(f'Invalid {name}: {scope!r} (expected a str or a '
                        'list of str)')
    if not scope:
        raise ValueError(f'Invalid {name}: [] (name at least one module, '
                         "e.g. ['backbone'])")
    return list(scope)


def _scope_depths(
    model: nn.Module,
    scope: Sequence[str],
    layer: str,
    trainable: set,
    setting: str = 'paramwise_cfg.rollback'
) -> Tuple[Dict[Any, int], int, List[str]]:
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
                f'Invalid {setting}.scope entry {entry!r}: '
                f'{type(model).__name__} has no such module (top-level '
                f'modules: {top})') from None
        named = [(n, p) for n, p in module.named_parameters()
                 if p in trainable]
        if not named:
            raise ValueError(
                f'Invalid {setting}.scope entry {entry!r}: it '
                'matches no trainable parameter (all frozen or none)')
        if any(p in depth_of for _, p in named):
            raise ValueError(
                f'Invalid {setting}.scope entry {entry!r}: it '
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


def _log_table(numel: Dict[Tuple, int], max_depth: int, rules: List[str],
               cfg: Dict[str, Any], base: str) -> None:
    lines = [
        f"OLOR rollback: max={cfg['max']}, min={cfg['min']}, "
        f"power={cfg['power']}, layer={cfg['layer']!r}, "
        f"scope={cfg['scope']}, review={cfg['review']!r}, D={max_depth}",
        f'  param groups: {base}'
    ] + [f'  depth rule: {r}' for r in rules]
    lines.append(f"  {'layer id':>8} | {'params':>12} | rollback")
    in_scope = sorted((k for k in numel if k[0] is not None),
                      key=lambda k: (k[0], k[1]))
    for depth, rollback in in_scope:
        lines.append(f'  {depth:>8} | {numel[(depth, rollback)]:>12,} | '
                     f'{rollback:.6g}')
    for key in (k for k in numel if k[0] is None):
        lines.append(f"  {'outside':>8} | {numel[key]:>12,} | {key[1]:.6g}")
    # The generic rule is a guess about an unknown backbone: say so loudly.
    level = logging.WARNING if any('no forward pass' in r for r in rules) \
        else logging.INFO
    print_log('\n'.join(lines), logger='current', level=level)
