# Copyright (c) mmolor contributors. All rights reserved.
"""Drift from the pre-trained weights, layer by layer."""
import os.path as osp
from typing import Dict, Iterable, List, Tuple

import torch
from torch import Tensor, nn

from mmolor.optim.layer_depth import get_layer_depths

__all__ = ['relative_drift', 'layer_labels', 'layer_drift']


def relative_drift(pairs: Iterable[Tuple[Tensor, Tensor]]) -> float:
    """``||theta - theta_0|| / ||theta_0||`` over a set of tensors.

    The norms are taken over all the tensors together (as if flattened into
    one vector), in float64.

    Args:
        pairs (Iterable[tuple[Tensor, Tensor]]): ``(theta, theta_0)`` pairs.

    Returns:
        float: The relative drift; 0.0 when ``theta_0`` is all zeros and
        nothing moved, ``inf`` when it is all zeros and something did.
    """
    diff = ref = 0.0
    with torch.no_grad():
        for value, anchor in pairs:
            anchor64 = anchor.detach().double()
            diff += float((value.detach().double() - anchor64).square().sum())
            ref += float(anchor64.square().sum())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float('inf')
    return (diff / ref)**0.5


def layer_labels(depths: Dict[str, int]) -> Dict[int, str]:
    """A readable name for every depth of a ``{param name: depth}`` map.

    The longest dotted prefix shared by the depth's parameters (``layer1``,
    ``layer2.1``); ``stem`` for depth 0 and ``layer{d}`` when they share
    none.
    """
    names: Dict[int, list] = {}
    for name, depth in depths.items():
        names.setdefault(depth, []).append(name.split('.')[:-1])
    labels = {}
    for depth, parts in sorted(names.items()):
        prefix = osp.commonprefix(parts)
        if depth == 0:
            labels[depth] = 'stem'
        elif prefix:
            labels[depth] = '.'.join(prefix)
        else:
            labels[depth] = f'layer{depth}'
    return labels


def layer_drift(module: nn.Module,
                before: Dict[str, Tensor],
                after: Dict[str, Tensor],
                mode: str = 'block') -> List[Dict]:
    """Relative drift of every layer of ``module`` between two states.

    Args:
        module (nn.Module): The architecture (e.g. the backbone) whose
            layers are measured; its own weights are not used.
        before (dict[str, Tensor]): Parameters before fine-tuning, by the
            names of ``module.named_parameters()``.
        after (dict[str, Tensor]): Parameters after fine-tuning.
        mode (str): ``'block'`` or ``'stage'``, as in
            :func:`~mmolor.optim.get_layer_depths`. Defaults to ``'block'``.

    Returns:
        list[dict]: One ``dict(depth=int, layer=str, drift=float,
        params=int)`` per layer, shallow to deep.
    """
    found = get_layer_depths(module, mode)
    labels = layer_labels(found.depths)
    names: Dict[int, List[str]] = {}
    for name, depth in found.depths.items():
        names.setdefault(depth, []).append(name)
    return [
        dict(
            depth=depth,
            layer=labels[depth],
            drift=relative_drift((after[n], before[n]) for n in group),
            params=sum(before[n].numel() for n in group))
        for depth, group in sorted(names.items())
    ]
