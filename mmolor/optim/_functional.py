# Copyright (c) mmolor contributors. All rights reserved.
"""The update kernels of OLOR's optimizers (the classes are in ``olor.py``).

As in ``torch.optim``, the classes collect the tensors of their groups and
call one of these functions, which only compute:

- :func:`rollback_`, the review on its own (``p <- p - kappa * (p -
  anchor)``), after torch's own step, for groups that take torch's step;
- ``_fused_olor_adam`` / ``_fused_olor_sgd``: OLOR's fused CPU kernel
  (``csrc/olor_cpu.cpp``; ``fused=True``, and any ``foreach`` but False,
  wherever it takes the tensors), or torch's fused kernel and then the
  review (``fused=True``, and ``foreach=None`` on the CPU, where it does
  not);
- ``_multi_tensor_olor_adam`` / ``_multi_tensor_olor_sgd``: step and review
  in one multi-tensor update (``foreach=True`` where OLOR's kernel does not
  apply, and ``foreach=None`` off the CPU).

Each equals torch's step followed by the review up to floating-point
rounding; ``tests/reference.py`` is the literal version they are tested
against.
"""
import math
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor

from ._cpu_kernel import cpu_kernel
from ._helpers import (default_to_foreach, group_by_device_and_dtype,
                       iter_blocks)

__all__ = ['rollback_']

# NOTE [fast paths]: where the time goes (ResNet-50's 23.5 M float32
# parameters, 2-core CPU). torch's fused AdamW moves 28 bytes per parameter
# (reads p, g, m, v; writes p, m, v); OLOR must also read the anchor, so its
# floor is 32 / 28 = 1.14x (SGD with momentum: 24 / 20 = 1.20x). The review
# as a pass of its own (lerp: reads p and the anchor, writes p) moves 12
# bytes more: torch's fused step + review is ~1.45x. Running both passes
# block by block so that p stays in cache did not help (measured). OLOR's
# fused CPU kernel does step and review in one pass over each element (the
# floor's bytes), on torch's intra-op threads (built with OpenMP at install,
# see setup.py); it is faster than any multi-tensor update, so it also takes
# the CPU groups that ask for foreach=True. torch's foreach AdamW makes
# eight passes and allocates a full-size temporary for sqrt(v), whose page
# faults cost about half of its time. OLOR's multi-tensor update makes as
# many passes as torch's (it folds the bias correction of sqrt(v) into eps
# and the step size, which frees one pass for the review; SGD takes one
# pass more than torch's) and runs them block by block: the temporaries are
# one block, stay in cache and are reused by the allocator. On GPUs each
# foreach op is one kernel: no blocks there. README.md (Performance) has
# the measurements.
CPU_BLOCK_NUMEL = 1 << 18


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
        foreach = default_to_foreach(params)
    if foreach and not torch.jit.is_scripting():
        _multi_tensor_rollback(params, anchors, kappa=kappa)
    else:
        _single_tensor_rollback(params, anchors, kappa=kappa)


def _single_tensor_rollback(params: List[Tensor], anchors: List[Tensor], *,
                            kappa: float) -> None:
    for param, anchor in zip(params, anchors):
        if anchor.dtype == param.dtype:
            # lerp_(end, w) = p + w * (end - p) = p - w * (p - end).
            param.lerp_(anchor, kappa)
        else:  # lerp needs one dtype; add_ reads the anchor as it is
            param.mul_(1 - kappa).add_(anchor, alpha=kappa)


def _multi_tensor_rollback(params: List[Tensor], anchors: List[Tensor], *,
                           kappa: float) -> None:
    grouped = group_by_device_and_dtype(params, anchors)
    for device_params, device_anchors in grouped.values():
        _foreach_pull_(device_params, device_anchors, kappa, 1 - kappa)


def _foreach_pull_(params: List[Tensor], anchors: List[Tensor], kappa: float,
                   decay: float) -> None:
    """``params <- decay * params + kappa * anchors``, in one pass when it is
    a plain lerp (``decay == 1 - kappa``, one dtype), else in two."""
    if decay == 1 - kappa and all(a.dtype == p.dtype
                                  for p, a in zip(params, anchors)):
        torch._foreach_lerp_(params, anchors, kappa)
    else:
        torch._foreach_mul_(params, decay)
        torch._foreach_add_(params, anchors, alpha=kappa)


def _increment_steps(state_steps: List[Tensor]) -> List[float]:
    """Add 1 to every ``step`` tensor, as torch does, and read them back."""
    if all(step.is_cpu for step in state_steps):
        # One wrapped scalar for all (torch's own trick for CPU steps).
        torch._foreach_add_(
            state_steps, torch.tensor(1.0, device='cpu'), alpha=1.0)
    else:
        torch._foreach_add_(state_steps, 1)
    return [step.item() for step in state_steps]


def _adam_step_scalars(
        state_steps: List[Tensor], *, beta1: float, beta2: float, lr: float,
        eps: float, weight_decay: float, decoupled: bool,
        kappa: float) -> Tuple[List[float], List[float], float, float]:
    r"""Take the step count one further and return the scalars of the
    folded Adam update: per-tensor ``eps'`` and ``coef``, the weight
    multiplier ``decay`` and the coupled weight decay.

    With :math:`b_1 = 1-\beta_1^t`, :math:`b_2 = \sqrt{1-\beta_2^t}`:
    :math:`\gamma \hat m / (\sqrt{\hat v} + \epsilon) = (\gamma b_2 / b_1)
    m / (\sqrt{v} + \epsilon b_2)`, which saves the pass that divides
    :math:`\sqrt v` by :math:`b_2`; the review scales the step by
    :math:`1-\kappa` and the weight by ``decay`` :math:`= (1-\kappa)
    (1-\gamma\lambda)` for decoupled weight decay, else :math:`1-\kappa`.
    OLOR's fused CPU kernel computes the same numbers in C++.
    """
    cache: Dict[float, Tuple[float, float]] = {}
    eps_list, coef_list = [], []
    for step in _increment_steps(state_steps):
        if step not in cache:
            bc1 = 1 - beta1**step
            bc2_sqrt = math.sqrt(1 - beta2**step)
            cache[step] = (eps * bc2_sqrt, -(1 - kappa) * lr / bc1 * bc2_sqrt)
        eps_step, coef = cache[step]
        eps_list.append(eps_step)
        coef_list.append(coef)
    if decoupled:
        return eps_list, coef_list, (1 - kappa) * (1 - lr * weight_decay), 0.0
    return eps_list, coef_list, 1 - kappa, weight_decay


def _multi_tensor_olor_adam(params: List[Tensor],
                            grads: List[Tensor],
                            exp_avgs: List[Tensor],
                            exp_avg_sqs: List[Tensor],
                            max_exp_avg_sqs: List[Tensor],
                            state_steps: List[Tensor],
                            anchors: List[Tensor],
                            *,
                            amsgrad: bool,
                            beta1: float,
                            beta2: float,
                            lr: float,
                            weight_decay: float,
                            eps: float,
                            maximize: bool,
                            decoupled_weight_decay: bool,
                            kappa: float,
                            cpu_block_numel: Optional[int] = None) -> None:
    r"""Adam / AdamW step and review in one multi-tensor update.

    Moments as torch's foreach Adam computes them; the weights as
    :math:`\theta \leftarrow c\,\theta + \kappa\theta_0 - (1-\kappa)
    \gamma\hat m/(\sqrt{\hat v}+\epsilon)`, with :math:`c = (1-\kappa)
    (1-\gamma\lambda)` for decoupled weight decay, else :math:`1-\kappa`.
    That is the review :math:`\theta = \hat\theta - \kappa(\hat\theta -
    \theta_0)` of the AdamW step :math:`\hat\theta`, expanded. On the CPU
    the passes run block by block, ``cpu_block_numel`` elements at a time
    (None: all at once).
    """
    if not params:
        return
    eps_list, coef_list, decay, coupled_decay = _adam_step_scalars(
        state_steps,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        decoupled=decoupled_weight_decay,
        kappa=kappa)
    lists = [params, grads, exp_avgs, exp_avg_sqs, anchors]
    if amsgrad:
        lists.append(max_exp_avg_sqs)
    index = {id(p): i for i, p in enumerate(params)}
    for (device, _), bucket in group_by_device_and_dtype(*lists).items():
        ids = [index[id(p)] for p in bucket[0]]
        scalars = [[eps_list[i] for i in ids], [coef_list[i] for i in ids]]
        block_numel = cpu_block_numel if device.type == 'cpu' else None
        for tensors, (eps_block,
                      coef_block) in iter_blocks(bucket, scalars, block_numel):
            param, grad, exp_avg, exp_avg_sq, anchor = tensors[:5]
            if maximize:
                grad = torch._foreach_neg(grad)
                if coupled_decay != 0:
                    torch._foreach_add_(grad, param, alpha=coupled_decay)
            elif coupled_decay != 0:
                grad = torch._foreach_add(grad, param, alpha=coupled_decay)
            torch._foreach_lerp_(exp_avg, grad, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grad, grad, 1 - beta2)
            del grad
            if amsgrad:
                torch._foreach_maximum_(tensors[5], exp_avg_sq)
                denom = torch._foreach_sqrt(tensors[5])
            else:
                denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_add_(denom, eps_block)
            _foreach_pull_(param, anchor, kappa, decay)
            torch._foreach_addcdiv_(param, exp_avg, denom, coef_block)
            del denom


def _multi_tensor_olor_sgd(params: List[Tensor],
                           grads: List[Tensor],
                           momentum_buffer_list: List[Tensor],
                           anchors: List[Tensor],
                           *,
                           weight_decay: float,
                           momentum: float,
                           lr: float,
                           dampening: float,
                           nesterov: bool,
                           maximize: bool,
                           kappa: float,
                           cpu_block_numel: Optional[int] = None) -> None:
    r"""SGD step and review in one multi-tensor update.

    The momentum buffers as torch's foreach SGD computes them (after the
    first step, which creates them); the weights as
    :math:`\theta \leftarrow (1-\kappa)\theta +
    \kappa\theta_0 - (1-\kappa)\gamma d`. The gradients are not modified.
    """
    if not params:
        return
    lists = [params, grads, anchors]
    if momentum != 0:
        lists.append(momentum_buffer_list)
    step_alpha = -(1 - kappa) * lr
    for (device, _), bucket in group_by_device_and_dtype(*lists).items():
        block_numel = cpu_block_numel if device.type == 'cpu' else None
        for tensors, _ in iter_blocks(bucket, [], block_numel):
            param, grad, anchor = tensors[:3]
            own = False  # whether `grad` is a temporary of this block
            if maximize:
                grad, own = torch._foreach_neg(grad), True
            if weight_decay != 0:
                if own:
                    torch._foreach_add_(grad, param, alpha=weight_decay)
                else:
                    grad = torch._foreach_add(grad, param, alpha=weight_decay)
                    own = True
            if momentum != 0:
                bufs = tensors[3]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grad, alpha=1 - dampening)
                if not nesterov:
                    grad = bufs
                elif own:
                    torch._foreach_add_(grad, bufs, alpha=momentum)
                else:
                    grad = torch._foreach_add(grad, bufs, alpha=momentum)
            _foreach_pull_(param, anchor, kappa, 1 - kappa)
            torch._foreach_add_(param, grad, alpha=step_alpha)


def cpu_kernel_applies(params: List[Tensor], grads: List[Tensor],
                       anchor_dtypes: Set[torch.dtype]) -> bool:
    """Whether OLOR's fused CPU kernel takes these tensors: float32 weights
    and gradients, float32 or bfloat16 anchors. The state follows the
    weights; the kernel checks it, and the contiguity of everything, before
    it writes."""
    dtypes = {p.dtype for p in params}
    dtypes.update([g.dtype for g in grads])
    return dtypes <= {torch.float32} and anchor_dtypes <= {
        torch.float32, torch.bfloat16
    }


def _fused_olor_adam(params: List[Tensor],
                     grads: List[Tensor],
                     exp_avgs: List[Tensor],
                     exp_avg_sqs: List[Tensor],
                     max_exp_avg_sqs: List[Tensor],
                     state_steps: List[Tensor],
                     anchors: List[Tensor],
                     *,
                     amsgrad: bool,
                     beta1: float,
                     beta2: float,
                     lr: float,
                     weight_decay: float,
                     eps: float,
                     maximize: bool,
                     decoupled_weight_decay: bool,
                     kappa: float,
                     cpu_block_numel: Optional[int] = None) -> None:
    """OLOR's fused CPU kernel (step and review in one pass) where it
    applies; else torch's fused Adam / AdamW kernel, then the review.

    Same signature as :func:`_multi_tensor_olor_adam`. Raises RuntimeError
    (before changing anything, the step counts included) where neither
    kernel takes the tensors.
    """
    if not params:
        return
    kernel = cpu_kernel() if cpu_kernel_applies(
        params, grads, {a.dtype for a in anchors}) else None
    if kernel is not None:
        # It counts the steps and derives the scalars of each tensor as
        # _adam_step_scalars does.
        kernel.olor_adam_(params, grads, exp_avgs, exp_avg_sqs,
                          max_exp_avg_sqs if amsgrad else [], state_steps,
                          anchors, lr, beta1, beta2, eps, weight_decay,
                          decoupled_weight_decay, kappa, amsgrad, maximize)
        return
    fused = torch._fused_adamw_ if decoupled_weight_decay \
        else torch._fused_adam_
    torch._foreach_add_(state_steps, 1)
    try:
        fused(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs if amsgrad else [],
            state_steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=amsgrad,
            maximize=maximize)
    except RuntimeError:
        torch._foreach_sub_(state_steps, 1)
        raise
    _multi_tensor_rollback(params, anchors, kappa=kappa)


def _fused_olor_sgd(params: List[Tensor],
                    grads: List[Tensor],
                    momentum_buffer_list: List[Tensor],
                    anchors: List[Tensor],
                    *,
                    weight_decay: float,
                    momentum: float,
                    lr: float,
                    dampening: float,
                    nesterov: bool,
                    maximize: bool,
                    kappa: float,
                    cpu_block_numel: Optional[int] = None) -> None:
    """OLOR's fused CPU kernel where it applies; else torch's fused SGD
    kernel (after the first momentum step), then the review. Same signature
    as :func:`_multi_tensor_olor_sgd`."""
    if not params:
        return
    kernel = cpu_kernel() if cpu_kernel_applies(
        params, grads, {a.dtype for a in anchors}) else None
    if kernel is not None:
        kernel.olor_sgd_(params, grads,
                         momentum_buffer_list if momentum != 0 else [],
                         anchors, weight_decay, momentum, dampening, nesterov,
                         -(1 - kappa) * lr, kappa, maximize)
        return
    torch._fused_sgd_(
        params,
        grads,
        momentum_buffer_list if momentum != 0 else [],
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=False)
    _multi_tensor_rollback(params, anchors, kappa=kappa)
