# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR: One Step Learning, One Step Review (Huang et al., AAAI 2024).

arXiv: https://arxiv.org/abs/2401.10962. Authors' code (classification
only): https://github.com/rainbow-xiao/OLOR-AAAI-2024.

Every optimizer step first takes the ordinary step of the torch optimizer the
class extends ("one step learning"), then pulls the result back toward the
pre-trained weights ("one step review"). Groups that do not roll back take
torch's own step, untouched. Groups that roll back take either torch's step
followed by the review, or, where that is faster, OLOR's own update that
computes step and review together. Both compute the same thing, up to
floating-point rounding.

This module holds the optimizer classes: their arguments, state and the
choice of path for each group (``_OLORMixin._fast_path``). The update
kernels they call are in ``_functional.py`` (see NOTE [fast paths] there).
"""
import contextlib
from typing import (Any, Callable, Dict, Iterator, List, Optional, Tuple,
                    Union)

import torch
from mmengine.registry import OPTIMIZERS
from torch import Tensor
from torch.optim import SGD, Adam, AdamW

from . import _functional as F
from ._functional import rollback_
from ._helpers import fast_path_supports

__all__ = ['OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_']

# Keys mmolor adds to every param group, with their defaults. All are
# ordinary group keys: saved by ``state_dict()``, shown by ``repr``, and
# ``rollback`` is schedulable by mmengine's ParamSchedulers
# (``param_name='rollback'``).
_GROUP_DEFAULTS = dict(
    rollback=0.0, rollback_follows_lr=True, anchor_dtype=None)


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


def _torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    return None if name is None else getattr(torch, name)


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
                 **kwargs) -> None:
        if 'compiled' in kwargs:
            raise TypeError(
                'OLOR optimizers no longer take `compiled`: OLOR\'s fused '
                'CPU kernel (fused=True, or no flag on the CPU) was faster '
                'than the torch.compile\'d update in every measurement '
                '(README.md, Performance)')
        validate_rollback(rollback)
        if not isinstance(rollback_follows_lr, bool):
            raise TypeError('Invalid rollback_follows_lr: '
                            f'{rollback_follows_lr!r} (expected a bool)')
        # Read by add_param_group, which torch's __init__ calls.
        self._olor_defaults = dict(
            rollback=float(rollback),
            rollback_follows_lr=rollback_follows_lr,
            anchor_dtype=validate_anchor_dtype(anchor_dtype))
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
            F.rollback_(
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
        tensors the fast paths do not handle. ``'fused'``: OLOR's fused CPU
        kernel, for ``fused=True`` and any ``foreach`` but False wherever it
        takes the tensors (the same update in one pass: faster than every
        multi-tensor update, see README.md, Performance), else torch's fused
        kernel and then the review, for ``fused=True`` or ``foreach=None``
        on the CPU (torch would loop over the tensors there, which is
        slower). ``'foreach'``: OLOR's own multi-tensor update (NOTE [fast
        paths]), for the other groups with ``foreach=True`` and
        ``foreach=None`` off the CPU.
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
        if group.get('foreach') is False and not group.get('fused'):
            return None
        kernel = self._fused_cpu_kernel(group, params)
        if group.get('fused'):
            return 'fused' if kernel else None
        if kernel == 'olor' or (kernel and group.get('foreach') is None):
            return 'fused'
        return 'foreach'

    def _fused_cpu_kernel(self, group: Dict[str, Any],
                          params: List[Tensor]) -> Optional[str]:
        """Which fused CPU kernel can take the step of a group: ``'olor'``
        (OLOR's: float32 weights and grads, float32 or bfloat16 anchors),
        ``'torch'`` (torch's, then the review) or None. Either needs every
        tensor on the CPU and contiguous (both read contiguous memory).
        """
        if getattr(self, '_fused_failed', False):
            return None
        for p in params:
            if not (p.is_cpu and p.is_contiguous() and p.grad.is_contiguous()):
                return None
        anchor_dtype = _torch_dtype(group['anchor_dtype']) or torch.float32
        if F.cpu_kernel() is not None and F.cpu_kernel_applies(
                params, [p.grad for p in params], {anchor_dtype}):
            return 'olor'  # it checks the state itself
        if all(
                value.is_contiguous() for p in params
                for value in self.state[p].values()
                if torch.is_tensor(value) and value.dim() > 0):
            return 'torch'
        return None

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
            kwargs = dict(key, cpu_block_numel=F.CPU_BLOCK_NUMEL)
            if fused:
                try:
                    self._fused_kernel(*tensor_lists, **kwargs)
                    continue
                except (RuntimeError, AttributeError):  # no fused CPU kernel
                    self._fused_failed = True
            self._multi_tensor_kernel(*tensor_lists, **kwargs)

    def _anchor_of(self, p: Tensor, new_anchors: Dict[Tensor,
                                                      Tensor]) -> Tensor:
        state = self.state[p]
        return state['anchor'] if 'anchor' in state else new_anchors[p]

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

    _multi_tensor_kernel = staticmethod(F._multi_tensor_olor_adam)
    _fused_kernel = staticmethod(F._fused_olor_adam)

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

    _multi_tensor_kernel = staticmethod(F._multi_tensor_olor_sgd)
    _fused_kernel = staticmethod(F._fused_olor_sgd)

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

    .. note::
        Speed. Groups that do not roll back are torch's optimizer. Groups
        that roll back take, on the CPU with float32 weights, OLOR's fused
        CPU kernel (step and review in one pass, on torch's intra-op
        threads; compiled when mmolor is installed) unless
        ``foreach=False``. Elsewhere: with ``fused=True`` and with
        ``foreach=None`` on the CPU torch's fused kernel and then the
        review; with ``foreach=True`` (and ``foreach=None`` off the CPU)
        OLOR's multi-tensor update, which computes step and review in as
        many passes as torch's foreach step and, on the CPU, runs them
        block by block in cache; with ``foreach=False`` torch's loop, then
        the review. The review as a pass of its own costs about 0.45x a fused
        AdamW step on a CPU. All results equal torch's step followed by the
        review up to floating-point rounding.

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