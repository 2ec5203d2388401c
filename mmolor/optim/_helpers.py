# Copyright (c) mmolor contributors. All rights reserved.
"""The few private torch helpers mmolor uses, fenced off with fallbacks.

torch's own optimizers pick foreach kernels and bucket tensors by device and
dtype with private functions of ``torch.optim.optimizer``. They have been
stable since torch 2.0, but they are private: if an import fails, mmolor
falls back to the single-tensor path instead of failing.
"""
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from torch import Tensor

try:
    from torch.optim.optimizer import \
        _default_to_fused_or_foreach as _torch_default_to_fused_or_foreach
except ImportError:  # pragma: no cover - depends on the torch version
    _torch_default_to_fused_or_foreach = None

try:
    from torch.utils._foreach_utils import \
        _group_tensors_by_device_and_dtype as _torch_group_by_device_and_dtype
except ImportError:  # pragma: no cover - depends on the torch version
    _torch_group_by_device_and_dtype = None


def default_to_foreach(params: List[Tensor]) -> bool:
    """Whether the foreach path should be used when ``foreach`` is None.

    The same rule as torch's optimizers: foreach when every tensor is a plain
    tensor on a device with foreach kernels.
    """
    if _torch_default_to_fused_or_foreach is None:  # pragma: no cover
        return False
    _, foreach = _torch_default_to_fused_or_foreach(
        params, differentiable=False, use_fused=False)
    return foreach


def group_by_device_and_dtype(
    params: List[Tensor], anchors: List[Tensor]
) -> Dict[Tuple[torch.device, torch.dtype], Tuple[List[Tensor],
                                                  List[Tensor]]]:
    """Bucket ``(params, anchors)`` pairs by the params' device and dtype."""
    if _torch_group_by_device_and_dtype is not None:
        grouped = _torch_group_by_device_and_dtype([params, anchors])
        return {key: (lists[0], lists[1])
                for key, (lists, _) in grouped.items()}
    buckets: Dict = defaultdict(lambda: ([], []))  # pragma: no cover
    for p, a in zip(params, anchors):  # pragma: no cover
        bucket = buckets[(p.device, p.dtype)]
        bucket[0].append(p)
        bucket[1].append(a)
    return dict(buckets)  # pragma: no cover
