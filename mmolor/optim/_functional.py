# Copyright (c) mmolor contributors. All rights reserved.
"""The review of OLOR's optimizers on its own (the classes are in
``olor.py``).

:func:`rollback_` pulls the parameters back toward their anchors after
torch's own step (the review ``'olor'``); :func:`drift_before_step` and
:func:`selective_rollback_` are the review ``'spd'``; :func:`l2sp_grads`
adds L2-SP's term to the gradients. The other path, OLOR's fused CPU
kernel, does the step and the review together in ``csrc/olor_cpu.cpp``.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

__all__ = [
    'rollback_', 'drift_before_step', 'selective_rollback_', 'l2sp_grads'
]


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
