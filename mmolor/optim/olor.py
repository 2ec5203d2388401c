# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR: One Step Learning, One Step Review (Huang et al., AAAI 2024).

arXiv: https://arxiv.org/abs/2401.10962. Authors' code (classification
only): https://github.com/rainbow-xiao/OLOR-AAAI-2024.

Every optimizer step first takes the ordinary step of the torch optimizer the
class extends ("one step learning"), then pulls the result back toward the
pre-trained weights ("one step review"). A group takes one of two paths,
chosen in one place (``_OLORMixin._takes_kernel``):

- OLOR's fused CPU kernel (``csrc/olor_cpu.cpp``): step and review in one
  pass over memory (two for the review ``'spd'``), where it applies
  (float32 weights on the CPU, unless ``foreach=False``);
- otherwise torch's own step, in whatever mode the group asks for
  (for-loop, foreach or fused), followed by the review (:func:`rollback_`).

Both compute the same update up to floating-point rounding;
``tests/reference.py`` is the literal version they are tested against.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from mmengine.registry import OPTIMIZERS
from torch import Tensor
from torch.optim import SGD, Adam, AdamW

from ._cpu_kernel import cpu_kernel
from ._functional import olor_adam, olor_sgd, rollback_

__all__ = [
    'OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_', 'is_olor_optimizer',
    'olor_optimizer', 'is_anchored'
]

# Keys mmolor adds to every param group, with their defaults. All are
# ordinary group keys: saved by ``state_dict()``, shown by ``repr``, and
# ``rollback`` is schedulable by mmengine's ParamSchedulers
# (``param_name='rollback'``).
_GROUP_DEFAULTS = dict(
    rollback=0.0,
    rollback_follows_lr=True,
    anchor_dtype=None,
    review='olor',
    l2sp=0.0)
# The review rules (see the classes' docstring).
REVIEWS = ('olor', 'spd')
# Anchor dtypes OLOR's fused CPU kernel reads (None: the weights' float32).
_KERNEL_ANCHOR_DTYPES = (None, 'float32', 'bfloat16')


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


def validate_review(value: Any, name: str = 'review') -> str:
    """Check a review rule: one of :data:`REVIEWS`.

    Raises:
        ValueError: ``value`` is not one of them.
    """
    if not isinstance(value, str) or value not in REVIEWS:
        raise ValueError(f'Invalid {name}: {value!r} (expected one of '
                         f'{REVIEWS})')
    return value


def validate_l2sp(value: Any, name: str = 'l2sp') -> float:
    """Check an L2-SP weight: a finite real number >= 0.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Invalid {name}: {value!r} (expected a float >= 0, '
                        f'got {type(value).__name__})')
    if not 0.0 <= value < float('inf'):
        raise ValueError(f'Invalid {name}: {value} (must be a finite float '
                         '>= 0)')
    return float(value)


def validate_anchor_dtype(value: Any,
                          name: str = 'anchor_dtype') -> Optional[str]:
    """Check an anchor dtype and return its name (``'bfloat16'``) or None.

    Accepts None (the parameter's own dtype), a floating-point
    :class:`torch.dtype` or its name (``'bfloat16'``, ``'torch.float16'``).
    Whether torch can combine it with the parameters' dtypes is checked when
    a param group is added.

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


def _check_anchor_promotion(name: Optional[str], params: List[Tensor],
                            where: str) -> None:
    """The review combines anchor and weight: torch must promote them (it
    refuses float8 with every other dtype)."""
    dtype = _torch_dtype(name)
    for p in params if dtype is not None else ():
        try:
            torch.promote_types(dtype, p.dtype)
        except RuntimeError as e:
            raise ValueError(
                f'Invalid {where}: {name!r} (the review combines anchors '
                f'with the {p.dtype} parameters of the group, and torch '
                f'refuses: {e}). Use float32, bfloat16 or float16, or None '
                'for the parameter\'s own dtype') from None


def rollback_fraction(group: Dict[str, Any]) -> float:
    """The rollback fraction of a group's step: ``rollback * lr_t / lr_0``.

    Reads the group only. lr_0 is the group's ``initial_lr`` (see NOTE
    [initial lr]); before it is known the step is the first one, and kappa
    is ``rollback``.
    """
    rollback = group['rollback']
    if rollback == 0 or not group['rollback_follows_lr']:
        return float(rollback)
    lr = float(group['lr'])
    initial_lr = float(group.get('initial_lr', lr))
    if initial_lr <= 0:
        return 0.0 if lr == 0 else float(rollback)
    # lr_t may exceed lr_0 (e.g. OneCycle); kappa stays a fraction.
    return min(rollback * lr / initial_lr, 1.0)


def is_anchored(group: Dict[str, Any]) -> bool:
    """Whether an OLOR param group keeps anchors of its parameters.

    A group keeps them when it rolls back (``rollback > 0``) or takes L2-SP
    (``l2sp > 0``), or will once a ParamScheduler, which records
    ``initial_rollback``, raises its rollback. Each of its parameters gets
    its anchor at its first step (see NOTE [anchor capture time]); the
    other groups take no review and store no anchor.

    Args:
        group (dict): A param group of an OLOR optimizer.

    Returns:
        bool: Whether the group's parameters have (or will have) anchors.
    """
    return (group['rollback'] > 0 or group.get('initial_rollback', 0) > 0
            or group['l2sp'] > 0)


class _OLORMixin:
    """The review, shared by every OLOR optimizer.

    Placed before the torch optimizer in the MRO: ``__init__`` takes the OLOR
    arguments and passes everything else to torch; ``step`` takes the step
    and the review on one of two paths (see the module docstring);
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
                 review: str = 'olor',
                 l2sp: float = 0.0,
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
            review=validate_review(review),
            l2sp=validate_l2sp(l2sp))
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
        validate_review(merged['review'], f'review of param group {index}')
        validate_l2sp(merged['l2sp'], f'l2sp of param group {index}')
        if 'anchor_dtype' in param_group:
            param_group['anchor_dtype'] = validate_anchor_dtype(
                param_group['anchor_dtype'],
                f'anchor_dtype of param group {index}')
        if merged.get('differentiable', False):
            raise RuntimeError('OLOR optimizers do not support '
                               '`differentiable=True`')
        super().add_param_group(param_group)  # type: ignore[misc]
        group = self.param_groups[-1]  # torch has made `params` a list
        try:
            _check_anchor_promotion(group['anchor_dtype'], group['params'],
                                    f'anchor_dtype of param group {index}')
        except ValueError:
            self.param_groups.pop()
            raise

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

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """Perform a single optimization step: learn, then review.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss. Defaults to None.
        """
        # As torch's Adam.step: a warning when a CUDA graph is captured with
        # `capturable=False` (the method's older name before torch 2.6).
        getattr(self, '_accelerator_graph_capture_health_check',
                getattr(self, '_cuda_graph_capture_health_check', None))()
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
            anchored = is_anchored(group)
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

        kappas = []
        for group in self.param_groups:
            # NOTE [initial lr]: lr_0 is `initial_lr`, which mmengine's and
            # torch's schedulers set when they are built (after
            # auto_scale_lr); without a scheduler it is the first positive lr
            # the group steps with (a step at lr 0 moves nothing, so it has
            # nothing to review).
            if ('initial_lr' not in group and group['rollback'] != 0
                    and group['rollback_follows_lr']):
                if not float(group['lr']) > 0:
                    kappas.append(0.0)
                    continue
                group['initial_lr'] = group['lr']
            kappas.append(rollback_fraction(group))
        # GradScaler hands fused optimizers `found_inf` and lets torch's
        # fused step skip the update; the review skips with it.
        found_inf = getattr(self, 'found_inf', None)
        skip_review = found_inf is not None and found_inf.item() != 0
        torch_options = dict(
            grad_scale=getattr(self, 'grad_scale', None), found_inf=found_inf)

        # Per group, the tensor lists (as torch's `step` collects them) and
        # one functional call: on the kernel, groups with equal settings
        # share one call (mmengine's constructor makes a group per
        # parameter, and per-call overhead would add up); torch's step runs
        # per group, as in torch.
        batches: Dict[Tuple, List[List[Tensor]]] = {}
        for group, k in zip(self.param_groups, kappas):
            tensors, options = self._group_tensors(group)
            params = tensors[0]
            if not params:
                continue
            anchors = [
                self.state[p]['anchor']
                if 'anchor' in self.state[p] else new_anchors[p]
                for p in params
            ] if is_anchored(group) else []
            options.update(
                kappa=0.0 if skip_review else k,
                review=group['review'],
                l2sp=group['l2sp'])
            if self._takes_kernel(group, k):
                batch = batches.setdefault(
                    tuple(sorted(options.items())),
                    [[] for _ in range(len(tensors) + 1)])
                for out, lst in zip(batch, tensors + [anchors]):
                    out.extend(lst)
                continue
            options.update(self._torch_options(group), **torch_options)
            self._functional(*tensors, anchors, kernel=None, **options)
            self._after_step(tensors)
        for key, tensor_lists in batches.items():
            self._functional(*tensor_lists, kernel=cpu_kernel(), **dict(key))
        for p, anchor in new_anchors.items():
            self.state[p]['anchor'] = anchor
        return loss

    def _takes_kernel(self, group: Dict[str, Any], k: float) -> bool:
        """Whether a group takes OLOR's fused CPU kernel (else torch's step
        and then the review): the one place that picks the path.

        The kernel takes groups that roll back or take L2-SP, do not ask for
        ``foreach=False``, hold float32 weights on the CPU with contiguous
        weights, grads and state, keep float32 or bfloat16 anchors and (SGD
        with momentum) have their momentum buffers. Never under GradScaler's
        scaled step, ``torch.compile``, ``capturable``/``differentiable`` or
        a tensor lr: torch's step handles those.
        """
        if (k == 0 and group['l2sp'] == 0) or cpu_kernel() is None:
            return False
        if group.get('foreach') is False and not group.get('fused'):
            return False
        if (torch.compiler.is_compiling() or group.get('capturable')
                or torch.is_tensor(group['lr'])
                or getattr(self, 'grad_scale', None) is not None
                or getattr(self, 'found_inf', None) is not None):
            return False
        if group['anchor_dtype'] not in _KERNEL_ANCHOR_DTYPES:
            return False
        params = [p for p in group['params'] if p.grad is not None]
        if not params:
            return False
        momentum = group.get('momentum', 0)
        for p in params:
            # torch keeps a grad's dtype, device and layout equal to its
            # param's; sparse grads were refused above.
            if not (type(p) in (Tensor, torch.nn.Parameter)
                    and type(p.grad) is Tensor and p.is_cpu
                    and p.dtype == torch.float32 and p.is_contiguous()
                    and p.grad.is_contiguous()):
                return False
            state = self.state[p]
            if momentum != 0 and state.get('momentum_buffer') is None:
                return False  # torch's first step creates it
            if not all(
                    v.is_contiguous() for v in state.values()
                    if torch.is_tensor(v)):
                return False
        return True

    # Implemented per base optimizer below: a group's tensor lists (torch's
    # `_init_group`, which creates missing state) with the functional
    # step's settings, the settings only torch's step takes, the functional
    # step, and what torch's `step` does after it.
    _group_tensors: Callable[..., Tuple[List[List[Any]], Dict[str, Any]]]
    _torch_options: Callable[..., Dict[str, Any]]
    _functional: Callable[..., None]

    def _after_step(self, tensors: List[List[Any]]) -> None:
        pass


class _OLORAdamMixin(_OLORMixin):
    """Adam and AdamW: torch's ``_init_group`` and :func:`olor_adam`."""

    _init_group: Callable
    _functional = staticmethod(olor_adam)

    def _group_tensors(self, group):
        # params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
        tensors: List[List[Tensor]] = [[] for _ in range(6)]
        # torch >= 2.2 returns whether a tensor is complex.
        self._has_complex = self._init_group(group, *tensors)
        beta1, beta2 = group['betas']
        return tensors, dict(
            amsgrad=group['amsgrad'],
            beta1=beta1,
            beta2=beta2,
            lr=group['lr'],
            eps=group['eps'],
            weight_decay=group['weight_decay'],
            maximize=group['maximize'],
            decoupled_weight_decay=bool(
                group.get('decoupled_weight_decay', isinstance(self,
                                                               AdamW))))

    def _torch_options(self, group):
        options = dict(
            foreach=group['foreach'],
            capturable=group['capturable'],
            differentiable=group['differentiable'],
            fused=group['fused'])
        if self._has_complex is not None:
            options['has_complex'] = self._has_complex
        return options


class _OLORSGDMixin(_OLORMixin):
    """SGD: torch's ``_init_group`` and :func:`olor_sgd`."""

    _init_group: Callable
    _functional = staticmethod(olor_sgd)

    def _group_tensors(self, group):
        # params, grads, momentum buffers (None before the first step)
        tensors: List[List[Any]] = [[], [], []]
        self._has_sparse_grad = self._init_group(group, *tensors)
        return tensors, dict(
            weight_decay=group['weight_decay'],
            momentum=group['momentum'],
            lr=group['lr'],
            dampening=group['dampening'],
            nesterov=group['nesterov'],
            maximize=group['maximize'])

    def _torch_options(self, group):
        options = dict(
            has_sparse_grad=self._has_sparse_grad, foreach=group['foreach'])
        if 'fused' in group:  # torch >= 2.3
            options['fused'] = group['fused']
        return options

    def _after_step(self, tensors):
        params, _, buffers = tensors
        for p, buffer in zip(params, buffers):
            if buffer is not None:  # as torch's SGD.step
                self.state[p]['momentum_buffer'] = buffer


_math_doc = r"""
    .. math::
       \begin{aligned}
            &\textbf{input}: \theta_0 \text{ (params, also the anchor)},
                \: r \text{ (rollback)}, \: \alpha \text{ (l2sp)},
                \: \gamma_t \text{ (lr)},
                \: \gamma_0 \text{ (initial lr)} \\
            &\textbf{for} \: t=1 \: \textbf{to} \: \ldots \: \textbf{do} \\
            &\hspace{5mm}g_t \leftarrow \nabla L(\theta_{t-1})
                + \alpha (\theta_{t-1} - \theta_0) \\
            &\hspace{5mm}\hat\theta_t \leftarrow
                \text{%(base)s}(\theta_{t-1}, g_t)
                \hspace{5mm}\textit{(one step learning)} \\
            &\hspace{5mm}\kappa_t \leftarrow \min(1, r \, \gamma_t / \gamma_0)
                \quad (\kappa_t \leftarrow r \text{ when }
                \texttt{rollback\_follows\_lr} \text{ is False}) \\
            &\hspace{5mm}\textbf{if} \: \texttt{review} = \texttt{'spd'}:
                \: \kappa_t \leftarrow \kappa_t \rho_t
                \text{ (below), per tensor} \\
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
    ``rollback == 0`` and ``l2sp == 0`` take no review and store no anchor,
    and are exactly :class:`torch.optim.%(base)s`.

    Review rules (``review``, a group setting):

    - ``'olor'``: the paper's review, :math:`\kappa_t` as above.
    - ``'spd'``: Selective Projection Decay's rule (Tian et al., NeurIPS
      2024): per tensor, the review acts only when the gradient step moves
      the tensor away from its anchor, :math:`g \cdot (\theta_{t-1} -
      \theta_0) < 0` (``g`` the gradient of the minimised loss, without the
      L2-SP and weight-decay terms), and only by the share of the new drift
      the step added: :math:`\rho_t = \mathrm{clamp}((\|\hat\theta_t -
      \theta_0\| - \|\theta_{t-1} - \theta_0\|) / \|\hat\theta_t -
      \theta_0\|, 0, 1)`, else :math:`\rho_t = 0`. With a constant
      ``rollback`` :math:`\lambda`, ``rollback_follows_lr=False`` and
      ``weight_decay=0``, ``OLORAdam(review='spd')`` is AdamSPD with weight
      decay :math:`\lambda`; with the constructor's layer-wise rollback it
      is OLOR's depth profile with SPD's selectivity. Under FSDP the norms
      and the condition are taken over each rank's shard of a tensor.

    ``rollback``, ``review`` and ``l2sp`` are ordinary param-group keys: set
    them per group (the :class:`~mmolor.optim.OLOROptimWrapperConstructor`
    sets them layer by layer) or schedule ``rollback`` with an mmengine
    ParamScheduler.

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
        review (str): The review rule, ``'olor'`` or ``'spd'`` (above).
            Defaults to ``'olor'``.
        l2sp (float): L2-SP's weight :math:`\alpha \ge 0`: the gradient
            gets :math:`\alpha (\theta - \theta_0)` before the base step,
            the gradient of :math:`\alpha / 2 \, \|\theta - \theta_0\|^2`
            (Li et al., ICML 2018), with the same anchors. Defaults to 0.0.

    .. note::
        Speed. Groups that do not roll back are torch's optimizer. Groups
        that roll back take, on the CPU with float32 weights, OLOR's fused
        CPU kernel (step and review in one pass, on torch's intra-op
        threads; compiled when mmolor is installed) unless
        ``foreach=False``. Everywhere else they take torch's step in the
        mode the group asks for (for-loop, ``foreach``, ``fused``), then
        the review as one multi-tensor pass (about 0.45x a fused AdamW step
        on a CPU). Both paths equal torch's step followed by the review up
        to floating-point rounding.

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


def is_olor_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an OLOR optimizer.

    True for :class:`OLORAdamW`, :class:`OLORAdam`, :class:`OLORSGD` and
    their subclasses; False for any other optimizer, including a wrapper
    around an OLOR optimizer (see :func:`olor_optimizer`).

    Args:
        optimizer (object): The object to check.

    Returns:
        bool: Whether it is an OLOR optimizer.
    """
    return isinstance(optimizer, _OLORMixin)


def olor_optimizer(
        optimizer: torch.optim.Optimizer) -> Optional[torch.optim.Optimizer]:
    """The OLOR optimizer that holds the anchors, or None.

    That is ``optimizer`` itself, or the local optimizer of a ZeRO optimizer
    (torch's or mmengine's ``ZeroRedundancyOptimizer``, whose ``optim`` is
    this rank's shard) over an OLOR optimizer; None for any other
    optimizer.

    Args:
        optimizer (torch.optim.Optimizer): An optimizer, e.g. the
            ``optimizer`` of mmengine's optim wrapper.

    Returns:
        torch.optim.Optimizer, optional: The OLOR optimizer, or None.
    """
    local = getattr(optimizer, 'optim', optimizer)  # torch's ZeRO: `.optim`
    return local if is_olor_optimizer(local) else None


for _cls, _base in ((OLORAdamW, 'AdamW'), (OLORAdam, 'Adam'), (OLORSGD,
                                                               'SGD')):
    _cls.__doc__ = (
        f'{_base} with OLOR\'s rollback toward the pre-trained weights.\n' +
        _math_doc % dict(base=_base))