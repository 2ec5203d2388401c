# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's step on tensor lists (the classes, in ``olor.py``, collect the
lists of each param group as torch's optimizers do).

:func:`olor_adam` and :func:`olor_sgd` take one step of a list of tensors
on one of two paths: OLOR's fused CPU kernel (``csrc/olor_cpu.cpp``: step
and review together), or torch's own functional step followed by the
review. :func:`rollback_` is the review ``'olor'``; :func:`drift_before_step`
and :func:`selective_rollback_` are the review ``'spd'``; :func:`l2sp_grads`
adds L2-SP's term to the gradients.
"""
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.optimizer import _default_to_fused_or_foreach
from torch.optim.sgd import sgd


__all__ = [
    'olor_adam', 'olor_sgd', 'rollback_', 'drift_before_step',
    'selective_rollback_', 'l2sp_grads'
]


def olor_adam(params: List[Tensor], grads: List[Tensor],
              exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
              max_exp_avg_sqs: List[Tensor], state_steps: List[Tensor],
              anchors: List[Tensor], *, kernel: Optional[Any], kappa: float,
              review: str, l2sp: float, amsgrad: bool, beta1: float,
              beta2: float, lr: float, weight_decay: float, eps: float,
              maximize: bool, decoupled_weight_decay: bool,
              **torch_options) -> None:
    """Functional API of OLOR-Adam / OLOR-AdamW: one step and review.

    ``kernel``, OLOR's compiled kernel module (``cpu_kernel()``), takes the
    step and the review where it is given (the caller has checked that the
    tensors suit it, see ``_OLORMixin._takes_kernel``); otherwise torch's
    ``adamw`` / ``adam`` takes the step with ``torch_options``
    (``foreach``, ``fused``, ``grad_scale``, ... as torch's ``Adam.step``
    passes them), then the review. ``anchors`` may be empty when ``kappa``
    and ``l2sp`` are 0.
    """
    spd = review == 'spd' and kappa != 0
    if kernel is not None:
        kernel.olor_adam_(params, grads, exp_avgs, exp_avg_sqs,
                                max_exp_avg_sqs if amsgrad else [],
                                state_steps, anchors, lr, beta1, beta2, eps,
                                weight_decay, decoupled_weight_decay, kappa,
                                amsgrad, maximize, l2sp, spd)
        return
    grads, before = _before_step(params, grads, anchors, spd, l2sp,
                                 maximize, torch_options.get('grad_scale'))
    step = adamw if decoupled_weight_decay else adam
    step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
        **torch_options)
    _review(params, anchors, kappa, before, torch_options)


def olor_sgd(params: List[Tensor], grads: List[Tensor],
             momentum_buffer_list: List[Optional[Tensor]],
             anchors: List[Tensor], *, kernel: Optional[Any], kappa: float,
             review: str, l2sp: float, weight_decay: float, momentum: float,
             lr: float, dampening: float, nesterov: bool, maximize: bool,
             **torch_options) -> None:
    """Functional API of OLOR-SGD: one step and review (see
    :func:`olor_adam`). New momentum buffers are in
    ``momentum_buffer_list`` afterwards, as with torch's ``sgd``."""
    spd = review == 'spd' and kappa != 0
    if kernel is not None:
        kernel.olor_sgd_(params, grads,
                               momentum_buffer_list if momentum != 0 else [],
                               anchors, weight_decay, momentum, dampening,
                               nesterov, lr, kappa, maximize, l2sp, spd)
        return
    grads, before = _before_step(params, grads, anchors, spd, l2sp,
                                 maximize, torch_options.get('grad_scale'))
    sgd(params,
        grads,
        momentum_buffer_list,
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        **torch_options)
    _review(params, anchors, kappa, before, torch_options)


def _before_step(params, grads, anchors, spd, l2sp, maximize, grad_scale):
    """The grads for torch's step (with L2-SP's term) and what the review
    'spd' needs from before the step (a new anchor has no drift: not
    moving away, no review)."""
    before = drift_before_step(
        params, grads, anchors, maximize=maximize) if spd else None
    if l2sp != 0:
        grads = l2sp_grads(
            params,
            grads,
            anchors,
            alpha=l2sp,
            maximize=maximize,
            grad_scale=grad_scale)
    return grads, before


def _review(params, anchors, kappa, before, torch_options) -> None:
    """The review after torch's step: 'spd' where ``before`` is given."""
    if kappa == 0:
        return
    if before is not None:
        selective_rollback_(params, anchors, before, kappa=kappa)
        return
    # Fused base steps get the foreach review (one launch per bucket);
    # otherwise follow the group's own choice.
    foreach = True if torch_options.get('fused') else torch_options.get(
        'foreach')
    rollback_(params, anchors, kappa=kappa, foreach=foreach)


def rollback_(params: List[Tensor],
              anchors: List[Tensor],
              *,
              kappa: float,
              foreach: Optional[bool] = None) -> None:
    r"""Functional API of the review: ``p <- p - kappa * (p - anchor)``.

    Applied in place to every ``p`` of ``params`` with the anchor of the same
    index. Anchors may be stored in another floating-point dtype than their
    params (see ``anchor_dtype``). See :class:`OLORAdamW` for the algorithm.

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
        _, foreach = _default_to_fused_or_foreach(
            params, differentiable=False, use_fused=False)
    if foreach and not torch.jit.is_scripting():
        for device_params, device_anchors in _by_device_and_dtype(
                params, anchors):
            if all(a.dtype == p.dtype
                   for p, a in zip(device_params, device_anchors)):
                torch._foreach_lerp_(device_params, device_anchors, kappa)
            else:  # lerp needs one dtype; add_ reads the anchor as it is
                torch._foreach_mul_(device_params, 1 - kappa)
                torch._foreach_add_(
                    device_params, device_anchors, alpha=kappa)
        return
    for param, anchor in zip(params, anchors):
        if anchor.dtype == param.dtype:
            # lerp_(end, w) = p + w * (end - p) = p - w * (p - end).
            param.lerp_(anchor, kappa)
        else:
            param.mul_(1 - kappa).add_(anchor, alpha=kappa)


def _by_device_and_dtype(
        params: List[Tensor],
        anchors: List[Tensor]) -> List[Tuple[List[Tensor], List[Tensor]]]:
    """Bucket params and their anchors by the params' device and dtype (the
    anchors may hold another dtype, which torch's own grouping refuses)."""
    buckets: Dict = defaultdict(lambda: ([], []))
    for p, a in zip(params, anchors):
        bucket = buckets[(p.device, p.dtype)]
        bucket[0].append(p)
        bucket[1].append(a)
    return list(buckets.values())


def drift_before_step(params: List[Tensor], grads: List[Tensor],
                      anchors: List[Tensor], *,
                      maximize: bool = False) -> List[Tuple[Tensor, Tensor]]:
    r"""What the review ``'spd'`` needs from before the step, per tensor:
    whether the gradient step moves it away from its anchor,
    :math:`g \cdot (\theta_{t-1} - \theta_0) < 0` (``g`` the gradient of
    the minimised loss: ``-grad`` under ``maximize``), and the drift's norm
    :math:`\|\theta_{t-1} - \theta_0\|`, as 0-dim tensors (no host
    sync)."""
    out = []
    for param, grad, anchor in zip(params, grads, anchors):
        drift = torch.sub(param, anchor)
        dot = torch.sum(grad * drift)
        out.append((dot > 0 if maximize else dot < 0,
                    torch.linalg.vector_norm(drift)))
    return out


def selective_rollback_(params: List[Tensor], anchors: List[Tensor],
                        before: List[Tuple[Tensor, Tensor]], *,
                        kappa: float) -> None:
    r"""Functional API of the review ``'spd'`` (Selective Projection Decay,
    Tian et al., NeurIPS 2024), after the base step, per tensor:

    .. math::
        \rho = \mathrm{clamp}\Big(\frac{\|\hat\theta_t - \theta_0\|
            - \|\theta_{t-1} - \theta_0\|}{\|\hat\theta_t - \theta_0\|},
            0, 1\Big), \qquad
        \theta_t = \hat\theta_t - \kappa \rho \,
            (\hat\theta_t - \theta_0)

    where the step moved the tensor away from its anchor (``before``, from
    :func:`drift_before_step`), :math:`\theta_t = \hat\theta_t` elsewhere
    (and where :math:`\hat\theta_t = \theta_0`).

    Args:
        params (list[Tensor]): Parameters after the base step.
        anchors (list[Tensor]): Their anchors (pre-trained weights).
        before (list[tuple[Tensor, Tensor]]): Per tensor, from
            :func:`drift_before_step`.
        kappa (float): The group's rollback fraction of this step.
    """
    for param, anchor, (away, drift) in zip(params, anchors, before):
        new_drift = torch.sub(param, anchor)
        now = torch.linalg.vector_norm(new_drift)
        # 0 / 0 (no drift) and -x / 0 give no review.
        ratio = ((now - drift) / now).nan_to_num_(0.0, 0.0, 0.0).clamp_(0, 1)
        param.sub_(new_drift.mul_((ratio * away * kappa).to(new_drift.dtype)))


def l2sp_grads(params: List[Tensor],
               grads: List[Tensor],
               anchors: List[Tensor],
               *,
               alpha: float,
               maximize: bool = False,
               grad_scale: Optional[Tensor] = None) -> List[Tensor]:
    r"""The gradients with L2-SP's term: ``grad + alpha * (p - anchor)``,
    i.e. the gradients of ``loss + alpha / 2 * ||p - anchor||^2`` (the term
    is subtracted under ``maximize``, so it stays a penalty; multiplied by
    ``grad_scale`` when the grads are still scaled). New tensors: the
    given grads are left as they are."""
    out = []
    for param, grad, anchor in zip(params, grads, anchors):
        term = torch.sub(param, anchor).to(grad.dtype)
        if grad_scale is not None:
            term.mul_(grad_scale.to(term.dtype))
        out.append(grad.add(term, alpha=-alpha if maximize else alpha))
    return out
