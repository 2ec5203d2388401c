# Copyright (c) mmolor contributors. All rights reserved.
"""The few private torch helpers mmolor uses, fenced off with fallbacks.

torch's own optimizers pick foreach kernels and bucket tensors by device and
dtype with private functions of ``torch.optim.optimizer``. They have been
stable since torch 2.0, but they are private: if an import fails, mmolor
falls back to the single-tensor path instead of failing.

The module also holds the bookkeeping of OLOR's multi-tensor update:
splitting tensor lists into cache-sized blocks.
"""
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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

# OLOR's own multi-tensor update handles CPU and CUDA tensors. torch's
# foreach kernels run on the CPU too (one ATen call per tensor), but torch
# only picks them by default on CUDA-like devices.
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)

GroupedLists = Dict[Tuple[torch.device, torch.dtype], Tuple[List[Tensor], ...]]


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


def group_by_device_and_dtype(params: List[Tensor], *others:
                              List[Tensor]) -> GroupedLists:
    """Bucket ``params`` and the lists beside them by the params' device and
    dtype.

    Only the params decide the bucket: the other lists may hold tensors of
    another dtype (anchors kept in ``anchor_dtype``), which torch's C++
    grouping rejects on some devices.

    Args:
        params (list[Tensor]): Tensors that decide the buckets.
        *others (list[Tensor]): Lists of the same length, bucketed with them.

    Returns:
        dict: ``(device, dtype) -> (params, *others)`` of each bucket.
    """
    same_dtype = all(a.dtype == p.dtype for other in others
                     for p, a in zip(params, other))
    if same_dtype and _torch_group_by_device_and_dtype is not None:
        grouped = _torch_group_by_device_and_dtype([params, *others])
        return {key: tuple(lists) for key, (lists, _) in grouped.items()}
    buckets: Dict = defaultdict(
        lambda: tuple([] for _ in range(1 + len(others))))
    for i, p in enumerate(params):
        bucket = buckets[(p.device, p.dtype)]
        bucket[0].append(p)
        for out, other in zip(bucket[1:], others):
            out.append(other[i])
    return dict(buckets)


def fast_path_supports(params: Sequence[Tensor]) -> bool:
    """Whether OLOR's own multi-tensor / fused update handles ``params``.

    Plain dense real floating-point tensors (and their grads) on the CPU or
    CUDA; anything else (complex, sparse, subclasses, other devices) takes
    torch's step followed by the review.
    """
    # Runs every step for every parameter, so it asks only what torch does
    # not guarantee: assigning ``p.grad`` already checks that the grad has
    # the param's dtype and device (comparing torch.device objects would
    # triple the cost of this loop).
    for p in params:
        grad = p.grad
        if (type(p) not in _PLAIN_TYPES or type(grad) is not Tensor
                or not (p.is_cpu or p.is_cuda) or not p.is_floating_point()
                or p.layout != torch.strided or grad.layout != torch.strided):
            return False
    return True


def iter_blocks(
    tensor_lists: Sequence[List[Tensor]], scalar_lists: Sequence[List[float]],
    block_numel: Optional[int]
) -> Iterator[Tuple[List[List[Tensor]], List[List[float]]]]:
    """Walk aligned tensor lists in blocks of about ``block_numel`` elements.

    Consecutive tensors are packed into a block until it holds
    ``block_numel`` elements; a tensor larger than that is cut into
    contiguous chunks (views, so in-place updates reach the tensor) when
    every list holds a contiguous tensor at its index. Running all the
    passes of an update on one block before moving to the next keeps the
    block in cache: memory traffic and temporaries shrink to one block's.

    Args:
        tensor_lists (Sequence[list[Tensor]]): Lists of equal length whose
            tensors at each index have the same shape.
        scalar_lists (Sequence[list[float]]): Per-tensor scalars, repeated
            for each chunk of a tensor.
        block_numel (int, optional): Elements per block. None yields the
            whole lists as one block.

    Yields:
        tuple: ``(tensor_lists, scalar_lists)`` of one block.
    """
    if block_numel is None:
        yield [list(t) for t in tensor_lists], [list(s) for s in scalar_lists]
        return
    lead = tensor_lists[0]
    # Chunk lengths are multiples of 64 so that vectorised kernels see
    # aligned chunks.
    align = 64
    cur_t: List[List[Tensor]] = [[] for _ in tensor_lists]
    cur_s: List[List[float]] = [[] for _ in scalar_lists]
    size = 0
    for i, tensor in enumerate(lead):
        numel = tensor.numel()
        if numel > block_numel and all(t[i].is_contiguous()
                                       for t in tensor_lists):
            pieces = -(-numel // block_numel)
            chunk = -(-numel // (pieces * align)) * align
            parts = [t[i].view(-1).split(chunk) for t in tensor_lists]
        else:
            parts = [(t[i], ) for t in tensor_lists]
        for j in range(len(parts[0])):
            for out, part in zip(cur_t, parts):
                out.append(part[j])
            for out_s, scalars in zip(cur_s, scalar_lists):
                out_s.append(scalars[i])
            size += parts[0][j].numel()
            if size >= block_numel:
                yield cur_t, cur_s
                cur_t = [[] for _ in tensor_lists]
                cur_s = [[] for _ in scalar_lists]
                size = 0
    if cur_t[0]:
        yield cur_t, cur_s

