# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR: One Step Learning, One Step Review (Huang et al., AAAI 2024).

arXiv: https://arxiv.org/abs/2401.10962. Authors' code (classification
only): https://github.com/rainbow-xiao/OLOR-AAAI-2024.

Every optimizer step first takes the ordinary step of the torch optimizer the
class extends ("one step learning"), then pulls the result back toward the
pre-trained weights ("one step review"). Groups that do not roll back take
torch's own step, untouched. Groups that roll back take either torch's step
followed by the review, or, where that is faster, OLOR's own update that
computes step and review together (see NOTE [fast paths]). Both compute the
same thing, up to floating-point rounding.
"""
import contextlib
import math
import warnings
from typing import (Any, Callable, Dict, Iterator, List, Optional, Set,
                    Tuple, Union)

import torch
from mmengine.registry import OPTIMIZERS
from torch import Tensor
from torch.optim import SGD, Adam, AdamW

from ._cpu_kernel import cpu_kernel
from ._helpers import (compiled, default_to_foreach, fast_path_supports,
                       group_by_device_and_dtype, iter_blocks)

__all__ = ['OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_']

# Keys mmolor adds to every param group, with their defaults. All are
# ordinary group keys: saved by ``state_dict()``, shown by ``repr``, and
# ``rollback`` is schedulable by mmengine's ParamSchedulers
# (``param_name='rollback'``).
_GROUP_DEFAULTS = dict(
    rollback=0.0, rollback_follows_lr=True, anchor_dtype=None, compiled=False)

# NOTE [fast paths]: where the time goes (ResNet-50's 23.5 M float32
# parameters, 2-core CPU, torch 2.13). torch's fused AdamW moves 28 bytes per
# parameter (reads p, g, m, v; writes p, m, v) in ~14 ms; OLOR must also read
# the anchor, so its floor is 32 / 28 = 1.14x. The review as a pass of its
# own (lerp: reads p and the anchor, writes p) moves 12 bytes and takes
# ~5 ms: fused step + review is ~1.45x. Running both passes block by block so
# that p stays in cache did not help (measured); one loop per tensor does
# (`compiled`, torch.compile), as far as inductor's loop is as fast as
# torch's hand-written kernel. torch's foreach AdamW makes eight passes and
# allocates a full-size temporary for sqrt(v), whose page faults cost about
# half of its ~43 ms. OLOR's multi-tensor update makes as many passes as
# torch's (it folds the bias correction of sqrt(v) into eps and the step
# size, which frees one pass for the review) and runs them block by block:
# the temporaries are one block, stay in cache and are reused by the
# allocator. With foreach=None on the CPU, where torch would loop over the
# tensors, OLOR takes its own fused CPU kernel (csrc/olor_cpu.cpp: step and
# review in one pass, 32 bytes per parameter), or where that cannot be built
# the fastest step torch has, its fused kernel, and then the review. On GPUs
# each foreach op is one kernel: no blocks there.
_CPU_BLOCK_NUMEL = 1 << 18


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


def validate_anchor_dtype(value: Any,
                          name: str = 'anchor_dtype') -> Optional[str]:
    """Check an anchor dtype and return its name (``'bfloat16'``) or None.

    Accepts None (the parameter's own dtype), a floating-point
    :class:`torch.dtype` or its name (``'bfloat16'``, ``'torch.float16'``).

    Raises:
        ValueError: ``value`` is not a floating-point dtype.
    """
    if value is None:
        return None
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value.replace('torch.', '', 1), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f'Invalid {name}: {value!r} (expected None or a '
                         'floating-point dtype such as torch.bfloat16)')
    return str(dtype).replace('torch.', '', 1)


def validate_compiled(value: Any, name: str = 'compiled') -> Union[bool, str]:
    """Check the ``compiled`` switch: a bool or a torch.compile backend name.

    Raises:
        TypeError: ``value`` is neither a bool nor a non-empty string.
    """
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value
    raise TypeError(f'Invalid {name}: {value!r} (expected a bool or the '
                    'name of a torch.compile backend)')


def _torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    return None if name is None else getattr(torch, name)


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
    \theta_0)` of the AdamW step :math:`\hat\theta`, expanded.
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


def _cpu_kernel_applies(params: List[Tensor], grads: List[Tensor],
                        anchor_dtypes: Set[torch.dtype]) -> bool:
    """Whether OLOR's fused CPU kernel takes these tensors: float32 weights
    and gradients, float32 or bfloat16 anchors. The state follows the
    weights; the kernel checks it, and the contiguity of everything, before
    it writes."""
    return anchor_dtypes <= {torch.float32, torch.bfloat16} and all(
        p.dtype == torch.float32 and g.dtype == torch.float32
        for p, g in zip(params, grads))


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
    (before changing anything) where torch has no such kernel.
    """
    if not params:
        return
    kernel = cpu_kernel() if _cpu_kernel_applies(
        params, grads, {a.dtype for a in anchors}) else None
    if kernel is not None:
        eps_list, coef_list, decay, coupled_decay = _adam_step_scalars(
            state_steps,
            beta1=beta1,
            beta2=beta2,
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled_weight_decay,
            kappa=kappa)
        try:
            kernel.olor_adam_(params, grads, exp_avgs, exp_avg_sqs,
                              max_exp_avg_sqs, anchors, eps_list, coef_list,
                              beta1, beta2, coupled_decay, decay, kappa,
                              amsgrad, maximize)
        except RuntimeError:  # it checks everything before writing
            torch._foreach_sub_(state_steps, 1)
            raise
        return
    kernel = torch._fused_adamw_ if decoupled_weight_decay \
        else torch._fused_adam_
    torch._foreach_add_(state_steps, 1)
    try:
        kernel(
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
    kernel = cpu_kernel() if _cpu_kernel_applies(
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


def _compiled_olor_adam(params: List[Tensor], grads: List[Tensor],
                        exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                        max_exp_avg_sqs: List[Tensor], anchors: List[Tensor],
                        scalars: Tensor, *, amsgrad: bool,
                        maximize: bool) -> None:
    """Adam / AdamW step and review, one tensor at a time, written for
    ``torch.compile``: inductor turns each tensor's update into one pass.

    Every number is a column of ``scalars`` (one row per tensor: 1 - beta1,
    beta2, 1 - beta2, coupled weight decay, weight multiplier ``c``, step
    coefficient, eps', kappa), so a new lr or kappa never recompiles.
    """
    for i in range(len(params)):
        param, exp_avg, exp_avg_sq = params[i], exp_avgs[i], exp_avg_sqs[i]
        (one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay, coef,
         eps, kappa) = scalars[i].unbind()
        grad = -grads[i] if maximize else grads[i]
        grad = grad + weight_decay * param
        exp_avg.copy_(exp_avg + (grad - exp_avg) * one_minus_beta1)
        exp_avg_sq.copy_(exp_avg_sq * beta2 + grad * grad * one_minus_beta2)
        if amsgrad:
            max_exp_avg_sqs[i].copy_(
                torch.maximum(max_exp_avg_sqs[i], exp_avg_sq))
            denom = max_exp_avg_sqs[i].sqrt() + eps
        else:
            denom = exp_avg_sq.sqrt() + eps
        param.copy_(param * decay + anchors[i].to(param.dtype) * kappa +
                    exp_avg / denom * coef)


def _compiled_olor_sgd(params: List[Tensor], grads: List[Tensor],
                       momentum_buffer_list: List[Tensor],
                       anchors: List[Tensor], scalars: Tensor, *,
                       momentum: bool, nesterov: bool, maximize: bool) -> None:
    """SGD step and review, one tensor at a time, for ``torch.compile``.

    ``scalars`` rows: weight decay, momentum, 1 - dampening, step
    coefficient ``-(1 - kappa) * lr``, kappa.
    """
    for i in range(len(params)):
        param = params[i]
        weight_decay, mom, one_minus_dampening, coef, kappa = scalars[
            i].unbind()
        grad = -grads[i] if maximize else grads[i]
        grad = grad + weight_decay * param
        if momentum:
            buf = momentum_buffer_list[i]
            buf.copy_(buf * mom + grad * one_minus_dampening)
            grad = grad + buf * mom if nesterov else buf
        param.copy_(param * (1 - kappa) + anchors[i].to(param.dtype) * kappa +
                    grad * coef)


class _OLORMixin:
    """The review, shared by every OLOR optimizer.

    Placed before the torch optimizer in the MRO: ``__init__`` takes the OLOR
    arguments and passes everything else to torch; ``step`` runs torch's own
    step (or the fused update, see NOTE [fast paths]) and then the review;
    ``add_param_group`` adds and validates the OLOR keys.
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
                 anchor_dtype: Union[None, str, torch.dtype] = None,
                 compiled: Union[bool, str] = False,
                 **kwargs) -> None:
        validate_rollback(rollback)
        if not isinstance(rollback_follows_lr, bool):
            raise TypeError('Invalid rollback_follows_lr: '
                            f'{rollback_follows_lr!r} (expected a bool)')
        # Read by add_param_group, which torch's __init__ calls.
        self._olor_defaults = dict(
            rollback=float(rollback),
            rollback_follows_lr=rollback_follows_lr,
            anchor_dtype=validate_anchor_dtype(anchor_dtype),
            compiled=validate_compiled(compiled))
        super().__init__(params, *args, **kwargs)  # type: ignore[call-arg]
        del self._olor_defaults  # now in self.defaults

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group, with the OLOR defaults and validation."""
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
        if 'anchor_dtype' in param_group:
            param_group['anchor_dtype'] = validate_anchor_dtype(
                param_group['anchor_dtype'],
                f'anchor_dtype of param group {index}')
        validate_compiled(merged['compiled'],
                          f'compiled of param group {index}')
        if merged.get('differentiable', False):
            raise RuntimeError('OLOR optimizers do not support '
                               '`differentiable=True`')
        super().add_param_group(param_group)  # type: ignore[misc]

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Called by unpickling and at the end of load_state_dict().
        super().__setstate__(state)  # type: ignore[misc]
        # Groups saved without the OLOR keys (e.g. by a torch optimizer) take
        # this optimizer's defaults.
        for key, value in _GROUP_DEFAULTS.items():
            value = self.defaults.setdefault(key, value)
            for group in self.param_groups:
                group.setdefault(key, value)
        # load_state_dict() casts floating-point state to the param's dtype;
        # anchors kept in `anchor_dtype` go back to it (losslessly).
        for group in self.param_groups:
            dtype = _torch_dtype(group['anchor_dtype'])
            for p in group['params'] if dtype is not None else ():
                anchor = self.state[p].get('anchor') if p in self.state \
                    else None
                if anchor is not None and anchor.dtype != dtype:
                    self.state[p]['anchor'] = anchor.to(dtype)

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
        # without a scheduler it is the first positive lr the group steps
        # with (a step at lr 0 moves nothing, so it has nothing to review).
        if 'initial_lr' not in group:
            if lr <= 0:
                return 0.0
            group['initial_lr'] = lr
        initial_lr = float(group['initial_lr'])
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
        # before that step. It goes into `state` only after the step: torch
        # initialises its own state under `len(state) == 0`.
        new_anchors = {}
        for group in self.param_groups:
            anchored = self._anchored(group)
            dtype = _torch_dtype(group['anchor_dtype'])
            for p in group['params']:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f'{type(self).__name__} does not support sparse '
                        'gradients')
                if anchored and 'anchor' not in self.state[p]:
                    new_anchors[p] = p.detach().to(
                        dtype=dtype or p.dtype,
                        copy=True,
                        memory_format=torch.preserve_format)

        kappas = [self._kappa(group) for group in self.param_groups]
        paths = [
            self._fast_path(group, kappa)
            for group, kappa in zip(self.param_groups, kappas)
        ]
        torch_groups = [
            g for g, path in zip(self.param_groups, paths) if path is None
        ]
        if len(torch_groups) == len(self.param_groups):
            super().step()  # type: ignore[misc]
        elif torch_groups:
            with self._only_groups(torch_groups):
                super().step()  # type: ignore[misc]
        for kind in ('fused', 'foreach'):
            items = [(g, k)
                     for g, k, path in zip(self.param_groups, kappas, paths)
                     if path == kind]
            if items:
                self._multi_tensor_update(items, new_anchors, kind == 'fused')
        to_compile = [(g, k)
                      for g, k, path in zip(self.param_groups, kappas, paths)
                      if path == 'compiled']
        if to_compile:
            self._compiled_update(to_compile, new_anchors)
        for p, anchor in new_anchors.items():
            self.state[p]['anchor'] = anchor

        # GradScaler hands fused optimizers `found_inf` and lets the fused
        # kernel skip the update; the review must skip with it.
        found_inf = getattr(self, 'found_inf', None)
        if found_inf is not None and found_inf.item() != 0:
            return loss

        for group, kappa, path in zip(self.param_groups, kappas, paths):
            if kappa == 0 or path is not None:
                continue
            params = [p for p in group['params'] if p.grad is not None]
            rollback_(
                params,
                [self.state[p]['anchor'] for p in params],
                kappa=kappa,
                # Fused base steps get the foreach review (one launch per
                # bucket); otherwise follow the group's own choice.
                foreach=True if group.get('fused') else group.get('foreach'))
        return loss

    @contextlib.contextmanager
    def _only_groups(self, groups: List[Dict[str, Any]]) -> Iterator[None]:
        """Let torch's ``step`` see only ``groups``."""
        saved = self.param_groups
        self.param_groups = groups
        try:
            yield
        finally:
            self.param_groups = saved

    def _fast_path(self, group: Dict[str, Any], kappa: float) -> Optional[str]:
        """How a group takes its step and review.

        None: torch's step (single-tensor, foreach or fused, as the group
        says), then the review; always so for groups that do not roll back
        (they stay exactly torch's optimizer), under GradScaler's scaled
        fused step, under ``torch.compile`` of the whole step, and for
        tensors the fast paths do not handle. ``'foreach'``: OLOR's own
        multi-tensor update (NOTE [fast paths]), for groups with
        ``foreach=True``, and ``foreach=None`` off the CPU. ``'fused'``:
        OLOR's fused CPU kernel (or torch's fused kernel, then the review),
        for ``fused=True`` or ``foreach=None`` on the CPU (torch would loop
        over the tensors there, which is slower).
        ``'compiled'``: the torch.compile'd update, for ``compiled`` groups.
        """
        if kappa == 0 or torch.compiler.is_compiling():
            return None
        if (getattr(self, 'grad_scale', None) is not None
                or getattr(self, 'found_inf', None) is not None):
            return None
        if (group.get('capturable') or group.get('differentiable')
                or torch.is_tensor(group['lr'])):
            return None
        params = [p for p in group['params'] if p.grad is not None]
        if not params or not fast_path_supports(params):
            return None
        if not self._fast_state_ready(group, params):
            return None
        if group['compiled'] and not getattr(self, '_compile_failed', False):
            return 'compiled'
        if group.get('foreach') is False and not group.get('fused'):
            return None
        if (group.get('fused') or group.get('foreach') is None) \
                and self._fused_cpu_ok(group, params):
            return 'fused'
        if group.get('fused'):
            return None
        return 'foreach'

    def _fused_cpu_ok(self, group: Dict[str, Any],
                      params: List[Tensor]) -> bool:
        """Whether a fused CPU kernel (OLOR's, else torch's) can take the
        step of a group: every tensor on the CPU and contiguous (both
        kernels read them as contiguous memory).
        """
        if getattr(self, '_fused_failed', False):
            return False
        for p in params:
            if not (p.is_cpu and p.is_contiguous() and p.grad.is_contiguous()):
                return False
        anchor_dtype = _torch_dtype(group['anchor_dtype']) or torch.float32
        if cpu_kernel() is not None and _cpu_kernel_applies(
                params, [p.grad for p in params], {anchor_dtype}):
            return True  # OLOR's kernel checks the state itself
        return all(
            value.is_contiguous() for p in params
            for value in self.state[p].values()
            if torch.is_tensor(value) and value.dim() > 0)

    # Implemented per base optimizer below.
    _multi_tensor_kernel: Callable
    _fused_kernel: Callable

    def _fast_state_ready(self, group: Dict[str, Any],
                          params: List[Tensor]) -> bool:
        raise NotImplementedError

    def _multi_tensor_args(
        self, group: Dict[str, Any], kappa: float, new_anchors: Dict[Tensor,
                                                                     Tensor]
    ) -> Tuple[Dict[str, Any], List[List[Tensor]]]:
        raise NotImplementedError

    def _multi_tensor_update(self, items: List[Tuple[Dict[str, Any], float]],
                             new_anchors: Dict[Tensor,
                                               Tensor], fused: bool) -> None:
        """Run the multi-tensor update (or torch's fused kernel and the
        review) over ``items``, pairs of a group and its kappa.

        Groups with the same hyper-parameters and kappa share one call:
        mmengine's constructor makes one group per parameter, and per-call
        overhead would otherwise add up.
        """
        batches: Dict[Tuple, List[List[Tensor]]] = {}
        for group, kappa in items:
            kwargs, tensor_lists = self._multi_tensor_args(
                group, kappa, new_anchors)
            key = tuple(sorted(kwargs.items()))
            if key not in batches:
                batches[key] = [[] for _ in tensor_lists]
            for out, tensors in zip(batches[key], tensor_lists):
                out.extend(tensors)
        for key, tensor_lists in batches.items():
            kwargs = dict(key, cpu_block_numel=_CPU_BLOCK_NUMEL)
            if fused:
                try:
                    self._fused_kernel(*tensor_lists, **kwargs)
                    continue
                except (RuntimeError, AttributeError):  # no fused CPU kernel
                    self._fused_failed = True
            self._multi_tensor_kernel(*tensor_lists, **kwargs)

    def _compiled_batch(
        self, group: Dict[str, Any], kappa: float, new_anchors: Dict[Tensor,
                                                                     Tensor]
    ) -> Tuple[Tuple, List[List[Tensor]], List[List[float]]]:
        raise NotImplementedError

    def _anchor_of(self, p: Tensor, new_anchors: Dict[Tensor,
                                                      Tensor]) -> Tensor:
        state = self.state[p]
        return state['anchor'] if 'anchor' in state else new_anchors[p]

    def _compiled_update(self, items: List[Tuple[Dict[str, Any], float]],
                         new_anchors: Dict[Tensor, Tensor]) -> None:
        """Run the compiled update over all ``compiled`` groups at once.

        Groups are batched (by device, flags and backend) into one call, so
        mmengine's one-group-per-parameter layout compiles one graph, not
        one per group.
        """
        batches: Dict[Tuple, Tuple[List[List[Tensor]], List]] = {}
        for group, kappa in items:
            key, tensor_lists, rows = self._compiled_batch(
                group, kappa, new_anchors)
            key = (key, group['compiled'], tensor_lists[0][0].device)
            if key not in batches:
                batches[key] = ([[] for _ in tensor_lists], [])
            for out, tensors in zip(batches[key][0], tensor_lists):
                out.extend(tensors)
            batches[key][1].extend(rows)
        for (key, backend, device), (tensor_lists, rows) in batches.items():
            fn, flags = key[0], dict(key[1:])
            # Inductor (torch 2.13, CPU) loses in-place updates of 0-dim
            # inputs; one-element views of them update the same memory.
            tensor_lists = [[
                t.view(1) if t is not None and t.dim() == 0 else t
                for t in tensors
            ] for tensors in tensor_lists]
            scalars = torch.tensor(rows, dtype=torch.float64, device=device)
            try:
                compiled(fn, backend)(*tensor_lists, scalars, **flags)
                continue
            except Exception as e:  # no compiler, unsupported backend ...
                warnings.warn(
                    f'{type(self).__name__}: the compiled update failed '
                    f'({type(e).__name__}: {e}); falling back to eager '
                    'kernels.')
                self._compile_failed = True
            # Compiling happens before the graph runs: nothing was updated,
            # so the eager function can take over this step.
            fn(*tensor_lists, scalars, **flags)

    def _decoupled(self, group: Dict[str, Any]) -> bool:
        return bool(
            group.get('decoupled_weight_decay', isinstance(self, AdamW)))


class _OLORAdamMixin(_OLORMixin):
    """Fast paths of the Adam family (Adam, AdamW)."""

    _init_group: Callable

    def _fast_state_ready(self, group: Dict[str, Any],
                          params: List[Tensor]) -> bool:
        return True  # torch's _init_group creates missing state

    def _adam_lists(self, group: Dict[str, Any],
                    new_anchors: Dict[Tensor, Tensor]) -> List[List[Tensor]]:
        params: List[Tensor] = []
        grads: List[Tensor] = []
        exp_avgs: List[Tensor] = []
        exp_avg_sqs: List[Tensor] = []
        max_exp_avg_sqs: List[Tensor] = []
        state_steps: List[Tensor] = []
        self._init_group(group, params, grads, exp_avgs, exp_avg_sqs,
                         max_exp_avg_sqs, state_steps)
        anchors = [self._anchor_of(p, new_anchors) for p in params]
        return [
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
            anchors
        ]

    _multi_tensor_kernel = staticmethod(_multi_tensor_olor_adam)
    _fused_kernel = staticmethod(_fused_olor_adam)

    def _multi_tensor_args(self, group, kappa, new_anchors):
        beta1, beta2 = group['betas']
        kwargs = dict(
            amsgrad=group['amsgrad'],
            beta1=beta1,
            beta2=beta2,
            lr=group['lr'],
            weight_decay=group['weight_decay'],
            eps=group['eps'],
            maximize=group['maximize'],
            decoupled_weight_decay=self._decoupled(group),
            kappa=kappa)
        return kwargs, self._adam_lists(group, new_anchors)

    def _compiled_batch(self, group, kappa, new_anchors):
        (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
         anchors) = self._adam_lists(group, new_anchors)
        beta1, beta2 = group['betas']
        eps_list, coef_list, decay, coupled = _adam_step_scalars(
            state_steps,
            beta1=beta1,
            beta2=beta2,
            lr=group['lr'],
            eps=group['eps'],
            weight_decay=group['weight_decay'],
            decoupled=self._decoupled(group),
            kappa=kappa)
        rows = [[
            1 - beta1, beta2, 1 - beta2, coupled, decay, coef, eps_step, kappa
        ] for eps_step, coef in zip(eps_list, coef_list)]
        if not group['amsgrad']:
            max_exp_avg_sqs = [None] * len(params)  # type: ignore[list-item]
        key = (_compiled_olor_adam, ('amsgrad', group['amsgrad']),
               ('maximize', group['maximize']))
        return key, [
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, anchors
        ], rows


class _OLORSGDMixin(_OLORMixin):
    """Fast paths of SGD."""

    _init_group: Callable

    def _fast_state_ready(self, group: Dict[str, Any],
                          params: List[Tensor]) -> bool:
        # The first momentum step creates the buffers (torch copies the
        # gradient in); it goes through torch's step.
        return group['momentum'] == 0 or all(
            self.state[p].get('momentum_buffer') is not None for p in params)

    def _sgd_lists(self, group: Dict[str, Any],
                   new_anchors: Dict[Tensor, Tensor]) -> List[List[Tensor]]:
        params: List[Tensor] = []
        grads: List[Tensor] = []
        bufs: List[Optional[Tensor]] = []
        self._init_group(group, params, grads, bufs)
        anchors = [self._anchor_of(p, new_anchors) for p in params]
        if group['momentum'] == 0:
            bufs = [None] * len(params)
        return [params, grads, bufs, anchors]  # type: ignore[list-item]

    _multi_tensor_kernel = staticmethod(_multi_tensor_olor_sgd)
    _fused_kernel = staticmethod(_fused_olor_sgd)

    def _multi_tensor_args(self, group, kappa, new_anchors):
        kwargs = dict(
            weight_decay=group['weight_decay'],
            momentum=group['momentum'],
            lr=group['lr'],
            dampening=group['dampening'],
            nesterov=group['nesterov'],
            maximize=group['maximize'],
            kappa=kappa)
        return kwargs, self._sgd_lists(group, new_anchors)

    def _compiled_batch(self, group, kappa, new_anchors):
        tensor_lists = self._sgd_lists(group, new_anchors)
        row = [
            group['weight_decay'], group['momentum'], 1 - group['dampening'],
            -(1 - kappa) * group['lr'], kappa
        ]
        key = (_compiled_olor_sgd, ('momentum', group['momentum']
                                    != 0), ('nesterov', group['nesterov']),
               ('maximize', group['maximize']))
        return key, tensor_lists, [row] * len(tensor_lists[0])


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
        anchor_dtype (str | torch.dtype, optional): Keep the anchors in this
            floating-point dtype, e.g. ``'bfloat16'`` to halve OLOR's extra
            memory. The review then pulls toward the anchor rounded to that
            dtype (for bfloat16, by at most 2**-8 of each weight). None keeps
            the parameter's dtype. Defaults to None.
        compiled (bool | str): Run step and review of rolling-back groups as
            one ``torch.compile``'d update (one pass over each tensor). The
            first step compiles, which takes about a minute on a CPU; if
            compiling fails the optimizer warns and uses eager kernels.
            A string names the ``torch.compile`` backend (``True`` is
            ``'inductor'``). Defaults to False.

    .. note::
        Speed. Groups that do not roll back are torch's optimizer. Groups
        that roll back take: with ``foreach=True`` (and ``foreach=None`` off
        the CPU) OLOR's multi-tensor update, which computes step and review
        in as many passes as torch's foreach step and, on the CPU, runs
        them block by block in cache; with ``foreach=None`` on the CPU
        torch's fused kernel, then the review; with ``fused=True`` the same;
        with ``foreach=False`` torch's loop, then the review; with
        ``compiled`` one compiled loop per tensor. The review as a pass of
        its own costs about 0.45x a fused AdamW step on a CPU. All results
        equal torch's step followed by the review up to floating-point
        rounding.

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
class OLORAdamW(_OLORAdamMixin, AdamW):
    pass


@OPTIMIZERS.register_module()
class OLORAdam(_OLORAdamMixin, Adam):
    pass


@OPTIMIZERS.register_module()
class OLORSGD(_OLORSGDMixin, SGD):
    pass


for _cls, _base in ((OLORAdamW, 'AdamW'), (OLORAdam, 'Adam'), (OLORSGD,
                                                               'SGD')):
    _cls.__doc__ = (
        f'{_base} with OLOR\'s rollback toward the pre-trained weights.\n' +
        _math_doc % dict(base=_base))
