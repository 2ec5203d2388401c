# Copyright (c) mmolor contributors. All rights reserved.
"""The review of OLOR's optimizers on its own (the classes are in
``olor.py``).

:func:`rollback_` pulls the parameters back toward their anchors after
torch's own step. The other path, OLOR's fused CPU kernel, does the step
and the review together in ``csrc/olor_cpu.cpp``.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

__all__ = ['rollback_']


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
