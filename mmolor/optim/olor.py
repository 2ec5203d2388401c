# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR: One Step Learning, One Step Review (Huang et al., AAAI 2024).

arXiv: https://arxiv.org/abs/2401.10962. Authors' code (classification
only): https://github.com/rainbow-xiao/OLOR-AAAI-2024.

Every optimizer step first takes the ordinary step of the torch optimizer the
class extends ("one step learning"), then pulls the result back toward the
pre-trained weights ("one step review"). mmolor does not re-implement Adam or
SGD: the base step is torch's own (single-tensor, foreach or fused); this
module adds the review, the lazily captured anchor and the dispatch.
"""
from typing import Any, Callable, Dict, List, Optional

import torch
from mmengine.registry import OPTIMIZERS
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from ._helpers import default_to_foreach, group_by_device_and_dtype

__all__ = ['OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_']

# Keys mmolor adds to every param group, with their defaults. Both are
# ordinary group keys: saved by ``state_dict()``, shown by ``repr`` and
# schedulable by mmengine's ParamSchedulers (``param_name='rollback'``).
_GROUP_DEFAULTS = dict(rollback=0.0, rollback_follows_lr=True)


def validate_rollback(value: Any, name: str = 'rollback') -> float:
    """Check a rollback strength: a real number in [0, 1].

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is NaN or outside [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Invalid {name}: {value!r} (expected a float in '
                        f'[0, 1], got {type(value).__name__})')
    # Written as `not (...)` so that NaN fails too.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'Invalid {name}: {value} (must be in [0, 1])')
    return float(value)


def rollback_(params: List[Tensor],
              anchors: List[Tensor],
              *,
              kappa: float,
              foreach: Optional[bool] = None) -> None:
    r"""Functional API of the review: ``p <- p - kappa * (p - anchor)``.

    Applied in place to every ``p`` of ``params`` with the anchor of the same
    index. See :class:`OLORAdamW` for the algorithm.

    Args:
        params (list[Tensor]): Parameters after the base step.
        anchors (list[Tensor]): Their anchors (pre-trained weights).
        kappa (float): Rollback fraction of this step, in [0, 1].
        foreach (bool, optional): Use torch's ``_foreach`` kernels. None
            picks them when every tensor supports them, as torch does.
            Defaults to None.
    """
    if not params:
        return
    if foreach is None:
        foreach = default_to_foreach(params)
    if foreach and not torch.jit.is_scripting():
        _multi_tensor_rollback(params, anchors, kappa=kappa)
    else:
        _single_tensor_rollback(params, anchors, kappa=kappa)


def _single_tensor_rollback(params: List[Tensor], anchors: List[Tensor], *,
                            kappa: float) -> None:
    for param, anchor in zip(params, anchors):
        # lerp_(end, w) = p + w * (end - p) = p - w * (p - end).
        param.lerp_(anchor, kappa)


def _multi_tensor_rollback(params: List[Tensor], anchors: List[Tensor], *,
                           kappa: float) -> None:
    grouped = group_by_device_and_dtype(params, anchors)
    for device_params, device_anchors in grouped.values():
        torch._foreach_lerp_(device_params, device_anchors, kappa)


class _OLORMixin:
    """The review, shared by every OLOR optimizer.

    Placed before the torch optimizer in the MRO: ``__init__`` takes the two
    OLOR arguments and passes everything else to torch; ``step`` runs
    torch's own step and then the review; ``add_param_group`` adds and
    validates the ``rollback`` keys.
    """

    # Set by torch's Optimizer.__init__; declared for type checkers.
    param_groups: List[Dict[str, Any]]
    state: Dict[Tensor, Dict[str, Any]]
    defaults: Dict[str, Any]

    def __init__(self,
                 params,
                 *args,
                 rollback: float = 0.0,
                 rollback_follows_lr: bool = True,
                 **kwargs) -> None:
        validate_rollback(rollback)
        if not isinstance(rollback_follows_lr, bool):
            raise TypeError('Invalid rollback_follows_lr: '
                            f'{rollback_follows_lr!r} (expected a bool)')
        # Read by add_param_group, which torch's __init__ calls.
        self._olor_defaults = dict(
            rollback=float(rollback), rollback_follows_lr=rollback_follows_lr)
        super().__init__(params, *args, **kwargs)  # type: ignore[call-arg]
        del self._olor_defaults  # now in self.defaults

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group, with ``rollback`` defaults and validation."""
        if 'rollback' not in self.defaults:  # the first group, from __init__
            self.defaults.update(self._olor_defaults)
        index = len(self.param_groups)
        # Checked before torch appends the group, so a bad group is not kept.
        merged = {**self.defaults, **param_group}
        validate_rollback(merged['rollback'],
                          f'rollback of param group {index}')
        if not isinstance(merged['rollback_follows_lr'], bool):
            raise TypeError(
                f'Invalid rollback_follows_lr of param group {index}: '
                f"{merged['rollback_follows_lr']!r} (expected a bool)")
        if merged.get('differentiable', False):
            raise RuntimeError('OLOR optimizers do not support '
                               '`differentiable=True`')
        super().add_param_group(param_group)  # type: ignore[misc]

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        # Groups saved without the OLOR keys (e.g. by a torch optimizer) take
        # this optimizer's defaults.
        for key, value in _GROUP_DEFAULTS.items():
            value = self.defaults.setdefault(key, value)
            for group in self.param_groups:
                group.setdefault(key, value)

    @staticmethod
    def _anchored(group: Dict[str, Any]) -> bool:
        # A group keeps anchors when it rolls back now, or will once a
        # ParamScheduler (which records `initial_rollback`) raises it.
        return group['rollback'] > 0 or group.get('initial_rollback', 0) > 0

    @staticmethod
    def _kappa(group: Dict[str, Any]) -> float:
        """The rollback fraction of this step: ``rollback * lr_t / lr_0``."""
        rollback = group['rollback']
        if rollback == 0 or not group['rollback_follows_lr']:
            return float(rollback)
        lr = float(group['lr'])
        # NOTE [initial lr]: lr_0 is `initial_lr`, which mmengine's and
        # torch's schedulers set when they are built (after auto_scale_lr);
        # without a scheduler it is the lr of the group's first step.
        initial_lr = float(group.setdefault('initial_lr', lr))
        if initial_lr <= 0:
            return 0.0 if lr == 0 else float(rollback)
        # lr_t may exceed lr_0 (e.g. OneCycle); kappa stays a fraction.
        return min(rollback * lr / initial_lr, 1.0)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step: learn, then review.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss. Defaults to None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # NOTE [anchor capture time]: mmengine builds the optimizer before
        # `init_cfg` / `load_from` load the pre-trained weights, so the anchor
        # is copied here, at each parameter's first real step, from its value
        # before that step. It goes into `state` only after torch's step:
        # torch initialises its own state under `len(state) == 0`.
        new_anchors = {}
        for group in self.param_groups:
            anchored = self._anchored(group)
            for p in group['params']:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f'{type(self).__name__} does not support sparse '
                        'gradients')
                if anchored and 'anchor' not in self.state[p]:
                    new_anchors[p] = p.detach().clone(
                        memory_format=torch.preserve_format)

        super().step()  # type: ignore[misc]
        for p, anchor in new_anchors.items():
            self.state[p]['anchor'] = anchor

        # GradScaler hands fused optimizers `found_inf` and lets the fused
        # kernel skip the update; the review must skip with it.
        found_inf = getattr(self, 'found_inf', None)
        if found_inf is not None and found_inf.item() != 0:
            return loss

        for group in self.param_groups:
            kappa = self._kappa(group)
            if kappa == 0:
                continue
            params = [p for p in group['params'] if p.grad is not None]
            rollback_(
                params, [self.state[p]['anchor'] for p in params],
                kappa=kappa,
                # Fused base steps get the foreach review (one launch per
                # bucket); otherwise follow the group's own choice.
                foreach=True if group.get('fused') else group.get('foreach'))
        return loss


_math_doc = r"""
    .. math::
       \begin{aligned}
            &\textbf{input}: \theta_0 \text{ (params, also the anchor)},
                \: r \text{ (rollback)}, \: \gamma_t \text{ (lr)},
                \: \gamma_0 \text{ (initial lr)} \\
            &\textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do} \\
            &\hspace{5mm}\hat\theta_t \leftarrow
                \text{%(base)s}(\theta_{t-1}, g_t)
                \hspace{5mm}\textit{(one step learning)} \\
            &\hspace{5mm}\kappa_t \leftarrow \min(1, r \, \gamma_t / \gamma_0)
                \quad (\kappa_t \leftarrow r \text{ when }
                \texttt{rollback\_follows\_lr} \text{ is False}) \\
            &\hspace{5mm}\theta_t \leftarrow \hat\theta_t
                - \kappa_t (\hat\theta_t - \theta_0)
                \hspace{5mm}\textit{(one step review)} \\
            &\textbf{return} \: \theta_t
       \end{aligned}

    The anchor :math:`\theta_0` is the parameter's value just before its
    first step (not at construction: mmengine loads pre-trained weights after
    building the optimizer). It lives in ``optimizer.state[p]['anchor']``, so
    ``state_dict()`` saves it and a resumed run keeps it. Parameters whose
    grad is None are left untouched (no step, no review); groups with
    ``rollback == 0`` take no review and store no anchor, and are exactly
    :class:`torch.optim.%(base)s`.

    ``rollback`` is an ordinary param-group key: set it per group (the
    :class:`~mmolor.optim.OLOROptimWrapperConstructor` sets it layer by
    layer) or schedule it with an mmengine ParamScheduler.

    Args:
        params (iterable): Parameters or param groups, as for
            :class:`torch.optim.%(base)s`.
        *args, **kwargs: Every argument of :class:`torch.optim.%(base)s`
            (``lr``, ``weight_decay``, ``foreach``, ``fused``, ...).
        rollback (float): Default rollback strength :math:`r` of the groups,
            in [0, 1]. 0 is plain fine-tuning, 1 pins the parameters to the
            anchor. Defaults to 0.0.
        rollback_follows_lr (bool): Scale the rollback by
            :math:`\gamma_t / \gamma_0`, so warm-up and decay schedules scale
            it too, as the authors' Adam code does. Defaults to True.

    .. note::
        The authors' ``AdamB`` writes the same update as
        :math:`\theta_t = \theta_{t-1} - \gamma_t (1 - \gamma_t b) u_t
        - \gamma_t b (\theta_{t-1} - \theta_0)`, i.e.
        :math:`\kappa_t = \gamma_t b`; with ``b = r / \gamma_0`` it is this
        class with ``weight_decay=0``. Their current ``SGDB`` subtracts
        :math:`b (\theta - \theta_0)` without the learning rate; mmolor uses
        the ``AdamB`` form for every base optimizer, as their first ``SGDB``
        did. ``differentiable=True`` is not supported.
"""


@OPTIMIZERS.register_module()
class OLORAdamW(_OLORMixin, AdamW):
    pass


@OPTIMIZERS.register_module()
class OLORAdam(_OLORMixin, Adam):
    pass


@OPTIMIZERS.register_module()
class OLORSGD(_OLORMixin, SGD):
    pass


for _cls, _base in ((OLORAdamW, 'AdamW'), (OLORAdam, 'Adam'),
                    (OLORSGD, 'SGD')):
    _cls.__doc__ = (
        f'{_base} with OLOR\'s rollback toward the pre-trained weights.\n' +
        _math_doc % dict(base=_base))
