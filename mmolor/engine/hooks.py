# Copyright (c) mmolor contributors. All rights reserved.
"""OLORDriftHook: how far each stage has drifted, and how hard OLOR pulls."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import Tensor, nn

from mmolor.optim import (get_layer_depths, is_anchored, olor_optimizer,
                          validate_scope)
from mmolor.optim.olor import rollback_fraction
from .drift import layer_labels, relative_drift

__all__ = ['OLORDriftHook', 'effective_kappa', 'olor_optimizer']

DATA_BATCH = Optional[Sequence[dict]]


def effective_kappa(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """The rollback fraction ``kappa`` a param group takes in a step.

    ``rollback * lr / initial_lr`` (capped at 1) for an OLOR optimizer (or
    a ZeRO optimizer over one) whose group follows the learning rate,
    ``rollback`` when it does not, and 0 for any other optimizer. Reads the
    group only.
    """
    return rollback_fraction(group) if olor_optimizer(optimizer) else 0.0


@HOOKS.register_module()
class OLORDriftHook(Hook):
    """Log the drift of every stage from the pre-trained weights, and kappa.

    Every ``interval`` training iterations (and at the last one) it logs,
    for each stage ``s`` of the modules in ``scope`` (stage 0 is the stem or
    patch embedding; stages as in
    :func:`~mmolor.optim.get_layer_depths` with ``'stage'``):

    - ``olor_drift/<stage>``: :math:`\\|\\theta_s - \\theta_{0,s}\\| /
      \\|\\theta_{0,s}\\|` over all the stage's parameters (frozen ones
      included);
    - ``olor_kappa/<stage>``: the rollback fraction :math:`\\kappa` of the
      step just taken (``rollback * lr / initial_lr`` for an OLOR optimizer
      whose rollback follows the lr), averaged over the stage's parameters
      weighted by their size; 0 for parameters outside the optimizer and
      for non-OLOR optimizers, so plain AdamW runs log their drift too.
      Under the review ``'spd'`` it is the group's rollback fraction, the
      most a tensor's kappa can be (each tensor's own kappa depends on its
      step and is not kept).

    The values go to the runner's logger (one line) and visualizer
    (``add_scalars``), so TensorBoard or any other configured backend shows
    them.

    :math:`\\theta_0` of a parameter that an OLOR optimizer anchors is
    that anchor (it survives ``--resume``). For any other trainable
    parameter it is a copy taken at ``before_train``, i.e. after
    ``init_cfg`` / ``load_from`` have loaded the pre-trained weights; that
    copy is the hook's only memory cost (none for anchored or frozen
    parameters).

    Example:
        >>> custom_hooks = [dict(type='OLORDriftHook', interval=50)]

    Args:
        interval (int): Log every this many iterations. Defaults to 50.
        scope (str | list[str]): The pre-trained modules, by attribute
            path in the model, as ``paramwise_cfg.rollback.scope``.
            Defaults to ``('backbone', )``.
    """

    # Before ParamSchedulerHook (LOW): the lr is still the lr of the step
    # just taken, so kappa is the one that step applied.
    priority = 'NORMAL'

    def __init__(self,
                 interval: int = 50,
                 scope: Sequence[str] = ('backbone', )) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or \
                interval < 1:
            raise ValueError(f'Invalid interval: {interval!r} (expected an '
                             'int >= 1)')
        self.interval = interval
        self.scope = validate_scope(scope)
        # label -> [(param, copy or None)]; filled at before_train
        self._stages: \
            'OrderedDict[str, List[Tuple[nn.Parameter, Optional[Tensor]]]]'
        self._stages = OrderedDict()

    def _stage_params(
            self, model: nn.Module) -> 'OrderedDict[str, List[nn.Parameter]]':
        stages: 'OrderedDict[str, List[nn.Parameter]]' = OrderedDict()
        for entry in self.scope:
            try:
                module = model.get_submodule(entry)
            except AttributeError:
                raise ValueError(
                    f'OLORDriftHook scope entry {entry!r}: '
                    f'{type(model).__name__} has no such module') from None
            found = get_layer_depths(module, 'stage')
            labels = layer_labels(found.depths)
            for name, param in module.named_parameters():
                label = labels[found.depths[name]]
                if len(self.scope) > 1:
                    label = f'{entry}.{label}' if entry else label
                stages.setdefault(label, []).append(param)
        return stages

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        olor = olor_optimizer(runner.optim_wrapper.optimizer)
        # Copy only what nothing else keeps: a frozen parameter never
        # moves, and one in an anchored OLOR group (of this rank's shard,
        # under ZeRO) gets its anchor at the first step that moves it.
        anchored = {
            p
            for group in (olor.param_groups if olor else ())
            if is_anchored(group) for p in group['params']
        }
        self._stages = OrderedDict(
            (label, [(p, None if not p.requires_grad or p in anchored else
                      p.detach().clone()) for p in params])
            for label, params in self._stage_params(model).items())
        if runner.iter > 0:
            runner.logger.warning(
                'OLORDriftHook: resumed at iteration '
                f'{runner.iter}; drift is measured from the weights at '
                'resume, except for parameters of an OLOR optimizer, which '
                'keeps their pre-trained anchors')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if self.every_n_train_iters(runner, self.interval) or \
                self.is_last_train_iter(runner):
            scalars = self.compute(runner.optim_wrapper.optimizer)
            runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
            stages = ' | '.join(
                f"{label} {scalars[f'olor_drift/{label}']:.4g} "
                f"(kappa {scalars[f'olor_kappa/{label}']:.3g})"
                for label in self._stages)
            runner.logger.info(f'OLOR drift |theta-theta0|/|theta0| at '
                               f'iter {runner.iter + 1}: {stages}')

    def compute(self, optimizer: torch.optim.Optimizer) -> Dict[str, float]:
        """The drift and kappa of every stage, as logged.

        Args:
            optimizer (torch.optim.Optimizer): The runner's optimizer.

        Returns:
            dict: ``{'olor_drift/<stage>': float, 'olor_kappa/<stage>':
            float}`` for every stage, shallow to deep.
        """
        kappa_of: Dict[nn.Parameter, float] = {}
        for group in optimizer.param_groups:
            kappa = effective_kappa(optimizer, group)
            for p in group['params']:
                kappa_of[p] = kappa
        olor = olor_optimizer(optimizer)
        state = olor.state if olor else {}
        drift, kappa = {}, {}
        for label, pairs in self._stages.items():
            pairs = [(p, state.get(p, {}).get('anchor', p)
                      if anchor is None else anchor) for p, anchor in pairs]
            drift[f'olor_drift/{label}'] = relative_drift(pairs)
            numel = sum(p.numel() for p, _ in pairs)
            kappa[f'olor_kappa/{label}'] = sum(
                kappa_of.get(p, 0.0) * p.numel()
                for p, _ in pairs) / max(numel, 1)
        return {**drift, **kappa}
