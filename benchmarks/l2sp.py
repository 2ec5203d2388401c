# Copyright (c) mmolor contributors. All rights reserved.
"""L2-SP (Li, Grandvalet and Davoine, ICML 2018) for mmdet/mmseg models.

The classic baseline against forgetting: a loss term
:math:`\\frac{\\alpha}{2} \\|\\theta - \\theta_0\\|^2` on the pre-trained
part of the model, added to the task losses, with any optimizer.
:func:`l2sp_model_cfg` turns a detector or segmentor config into the same
model whose ``loss()`` also returns ``loss_l2sp``.
"""
import copy
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

__all__ = ['L2SPMixin', 'l2sp_model_cfg']


class L2SPMixin:
    """Adds ``loss_l2sp = alpha / 2 * sum ||theta - theta_0||^2``.

    :math:`\\theta_0` is copied at the first ``loss()`` call, i.e. after
    the runner has loaded the pre-trained weights; it is not saved in
    checkpoints (a resumed run re-anchors to the resumed weights).

    Args:
        l2sp_alpha (float): The weight :math:`\\alpha`, >= 0.
        l2sp_scope (Sequence[str]): The pre-trained modules, by attribute
            path. Defaults to ``('backbone', )``.
    """

    def __init__(self,
                 *args,
                 l2sp_alpha: float,
                 l2sp_scope: Sequence[str] = ('backbone', ),
                 **kwargs) -> None:
        if not (isinstance(l2sp_alpha, (int, float)) and l2sp_alpha >= 0):
            raise ValueError(f'Invalid l2sp_alpha: {l2sp_alpha!r} (expected '
                             'a float >= 0)')
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.l2sp_alpha = float(l2sp_alpha)
        self.l2sp_scope = [l2sp_scope] if isinstance(l2sp_scope, str) \
            else list(l2sp_scope)
        self._l2sp_anchors: List = []

    def _l2sp_params(self) -> List[nn.Parameter]:
        return [
            p for entry in self.l2sp_scope
            for p in self.get_submodule(entry).parameters()  # type: ignore
            if p.requires_grad
        ]

    def l2sp_penalty(self) -> Tensor:
        """:math:`\\frac{\\alpha}{2} \\sum \\|\\theta - \\theta_0\\|^2`."""
        if not self._l2sp_anchors:
            self._l2sp_anchors = [(p, p.detach().clone())
                                  for p in self._l2sp_params()]
        total = sum(
            (p - anchor).square().sum() for p, anchor in self._l2sp_anchors)
        return 0.5 * self.l2sp_alpha * torch.as_tensor(total)

    def loss(self, *args, **kwargs) -> Dict[str, Tensor]:
        losses = super().loss(*args, **kwargs)  # type: ignore[misc]
        losses['loss_l2sp'] = self.l2sp_penalty()
        return losses


def l2sp_model_cfg(model_cfg: dict,
                   alpha: float,
                   scope: Sequence[str] = ('backbone', ),
                   registry=None) -> dict:
    """The config of ``model_cfg``'s model with the L2-SP loss term.

    Registers ``L2SP<Type>`` (a subclass of the model's class with
    :class:`L2SPMixin`) in ``registry`` once and returns a copy of the
    config that builds it.

    Args:
        model_cfg (dict): A detector or segmentor config (``type`` is a
            registered name or a class).
        alpha (float): The L2-SP weight.
        scope (Sequence[str]): The pre-trained modules. Defaults to
            ``('backbone', )``.
        registry (Registry, optional): Where ``type`` is registered.
            Defaults to mmdet's MODELS.

    Returns:
        dict: The new model config.
    """
    if registry is None:
        from mmdet.registry import MODELS as registry
    cfg = copy.deepcopy(dict(model_cfg))
    base = cfg['type']
    if isinstance(base, str):
        base = registry.get(base)
        if base is None:
            raise KeyError(f"{model_cfg['type']!r} is not in {registry}")
    name = f'L2SP{base.__name__}'
    if name not in registry.module_dict:
        registry.register_module(
            name=name, module=type(name, (L2SPMixin, base), {}))
    cfg.update(type=name, l2sp_alpha=alpha, l2sp_scope=list(scope))
    return cfg
