# Copyright (c) mmolor contributors. All rights reserved.
"""The rollback strength the constructor gives every layer of a config."""
import copy
from typing import Dict, List, Optional

from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from torch import nn

from mmolor.engine.drift import layer_labels
from mmolor.optim.layer_depth import get_layer_depths

__all__ = ['build_model', 'rollback_by_layer', 'plot_rollback']


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the config's ``default_scope`` (no weights).

    Args:
        cfg (Config): An mmdet or mmseg config.
    """
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS.build(copy.deepcopy(cfg.model))


def rollback_by_layer(cfg: Config,
                      model: Optional[nn.Module] = None) -> List[Dict]:
    """The rollback of every layer in the scope, as the optimizer gets it.

    Builds the config's optim wrapper (``OLOROptimWrapperConstructor``
    assigns the strengths) and reads each parameter's group back, so
    ``custom_keys`` overrides show too.

    Args:
        cfg (Config): A config whose ``optim_wrapper`` sets
            ``paramwise_cfg.rollback``.
        model (nn.Module, optional): The built model. Defaults to
            ``build_model(cfg)``.

    Returns:
        list[dict]: One ``dict(scope=str, depth=int, layer=str,
        rollback=float, params=int)`` per layer (per tensor with
        ``layer='tensor'``), shallow to deep; ``rollback`` is the
        numel-weighted mean over the layer's trainable parameters (one
        value unless ``custom_keys`` split a layer), None for a frozen
        layer (not in the optimizer).
    """
    rollback_cfg = cfg.optim_wrapper.get('paramwise_cfg', {}).get('rollback')
    if rollback_cfg is None:
        raise ValueError('The config sets no optim_wrapper.paramwise_cfg.'
                         'rollback: nothing rolls back')
    model = model if model is not None else build_model(cfg)
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    # The rollback is a property of the param groups, not of the wrapper:
    # an AmpOptimWrapper (which mmengine refuses to build without CUDA)
    # is read as a plain OptimWrapper.
    if wrapper_cfg.get('type') == 'AmpOptimWrapper':
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper_cfg.pop(key, None)
        wrapper_cfg['type'] = 'OptimWrapper'
    optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
    rollback_of = {
        p: group['rollback']
        for group in optim_wrapper.optimizer.param_groups
        for p in group['params']
    }
    scope = rollback_cfg.get('scope', ['backbone'])
    scope = [scope] if isinstance(scope, str) else list(scope)
    mode = rollback_cfg.get('layer', 'block')
    rows: List[Dict] = []
    for entry in scope:
        module = model.get_submodule(entry)
        named = list(module.named_parameters())
        if mode == 'tensor':
            # The constructor's tensor order counts trainable tensors only.
            trainable = [n for n, p in named if p in rollback_of]
            depths = {n: i for i, n in enumerate(trainable)}
            named = [(n, p) for n, p in named if n in depths]
            labels = {i: n for n, i in depths.items()}
        else:
            depths = get_layer_depths(module, mode).depths
            labels = layer_labels(depths)
        layers: Dict[int, List] = {}
        for name, p in named:
            layers.setdefault(depths[name], []).append(p)
        for depth, params in sorted(layers.items()):
            numel = sum(p.numel() for p in params)
            trained = [p for p in params if p in rollback_of]
            rollback = sum(rollback_of[p] * p.numel() for p in trained) / \
                sum(p.numel() for p in trained) if trained else None
            rows.append(
                dict(
                    scope=entry,
                    depth=depth,
                    layer=labels[depth],
                    rollback=rollback,
                    params=numel))
    return rows


def plot_rollback(rows: List[Dict], out: str, title: str = '') -> None:
    """Bar chart of :func:`rollback_by_layer`'s rows, saved as ``out``.

    Frozen layers (``rollback`` None) are labelled ``(frozen)`` in grey.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    one_scope = len({r['scope'] for r in rows}) == 1
    names = [(r['layer'] if one_scope else f"{r['scope']}.{r['layer']}") +
             (' (frozen)' if r['rollback'] is None else '') for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r['rollback'] or 0.0 for r in rows], color='C1')
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=60, ha='right', fontsize=8)
    for tick, row in zip(ax.get_xticklabels(), rows):
        if row['rollback'] is None:
            tick.set_color('grey')
    ax.set_xlabel('layer (shallow to deep)')
    ax.set_ylabel('rollback strength r')
    ax.set_title(title or 'OLOR rollback strength by layer', fontsize=9)
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
