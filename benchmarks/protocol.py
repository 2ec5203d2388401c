# Copyright (c) mmolor contributors. All rights reserved.
"""The upstream -> downstream protocol shared by the demo and the benchmark.

1. Upstream: pre-train a small ResNet on the bundled digits of some classes
   (:func:`~benchmarks.upstream.pretrain_upstream`), save it and score
   it on held-out upstream digits.
2. Downstream: compose COCO scenes from the other digits
   (:func:`~benchmarks.datasets.write_digit_scenes`) and fine-tune a Mask R-CNN
   whose backbone loads the upstream checkpoint (``configs/demo/``).
3. Measure: COCO AP downstream; upstream accuracy of the fine-tuned
   backbone (:func:`~benchmarks.retention.upstream_scores`); drift of
   every layer from the pre-trained weights.
"""
import glob
import json
import os
import os.path as osp
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mmolor.engine.drift import layer_drift
from .datasets import write_crops, write_digit_scenes
from .retention import (extract_features, linear_cka, reestimate_bn,
                        upstream_scores)
from .upstream import (build_backbone, pretrain_upstream, save_upstream,
                       upstream_split)

__all__ = [
    'REPO_ROOT', 'DEMO_CONFIGS', 'Upstream', 'prepare_upstream',
    'upstream_test_root', 'write_upstream_test_set', 'load_upstream',
    'prepare_scenes', 'path_options', 'read_metrics', 'read_curve',
    'last_checkpoint',
    'backbone_state', 'measure_backbone'
]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIGS = dict(
    adamw=osp.join(REPO_ROOT, 'configs', 'demo',
                   'mask-rcnn_r18-w16_fpn_adamw_900i_digits.py'),
    olor=osp.join(REPO_ROOT, 'configs', 'demo',
                  'mask-rcnn_r18-w16_fpn_olor-adamw_900i_digits.py'))
UPSTREAM_CLASSES = (0, 1, 2, 3, 4)
DOWNSTREAM_CLASSES = (5, 6, 7, 8, 9)


class Upstream(NamedTuple):
    """A pre-trained upstream model and what is needed to score it."""
    checkpoint: str  # mmengine-style file: backbone.* and head.* keys
    split: Dict[str, Tuple[np.ndarray, np.ndarray]]  # upscaled digits
    head: nn.Linear  # the upstream head, frozen
    state: Dict[str, torch.Tensor]  # backbone parameters (theta_0)
    scores: Dict[str, float]  # upstream accuracies of the pre-trained model


def prepare_upstream(work_dir: str,
                     seed: int = 0,
                     steps: int = 200,
                     classes=UPSTREAM_CLASSES,
                     matched: bool = False,
                     log_interval: int = 50) -> Upstream:
    """Pre-train, save and score the upstream model.

    Args:
        work_dir (str): Where the checkpoint goes.
        seed (int): Seed of the split, initialisation and batches.
            Defaults to 0.
        steps (int): Pre-training steps. Defaults to 200.
        classes (Sequence[int]): Upstream digits. Defaults to 0-4.
        matched (bool): Pre-train (and score) on digits in the downstream
            scenes' low-level statistics instead of clean crops
            (:func:`~benchmarks.upstream.pretrain_upstream`). Defaults to
            False.
        log_interval (int): Log the loss every this many steps. Defaults
            to 50.

    Returns:
        Upstream: The checkpoint path, data, head, weights and scores.
    """
    os.makedirs(work_dir, exist_ok=True)
    model, split = pretrain_upstream(
        classes=classes,
        steps=steps,
        seed=seed,
        matched=matched,
        log_interval=log_interval)
    name = (f"upstream_r18-w16_digits-{'-'.join(map(str, classes))}"
            f"{'_matched' if matched else ''}_seed{seed}.pth")
    checkpoint = osp.join(work_dir, name)
    save_upstream(
        model,
        checkpoint,
        meta=dict(
            classes=list(classes),
            steps=steps,
            seed=seed,
            matched=matched,
            image_size=split['train'][0].shape[-1]))
    write_upstream_test_set(split['test'], upstream_test_root(checkpoint))
    head = model.head.fc.eval().requires_grad_(False)
    state = {
        n: p.detach().clone()
        for n, p in model.backbone.named_parameters()
    }
    scores = upstream_scores(model.backbone, split, head=head)
    return Upstream(checkpoint, split, head, state, scores)


def upstream_test_root(checkpoint: str) -> str:
    """Where :func:`prepare_upstream` writes the held-out upstream digits
    of ``checkpoint`` as an mmpretrain data set (``crops/val.txt``)."""
    return osp.splitext(checkpoint)[0] + '_test'


def write_upstream_test_set(test: Tuple[np.ndarray, np.ndarray],
                            data_root: str) -> str:
    """Write held-out upstream ``(images, labels)`` as PNGs and an
    mmpretrain annotation file (the ``val`` part of
    :data:`~benchmarks.datasets.CROPS_LAYOUT`); returns the file."""
    return write_crops(data_root, 'val', *test)


def load_upstream(checkpoint: str) -> Upstream:
    """Rebuild the :class:`Upstream` that :func:`prepare_upstream` saved.

    The data split is drawn again from the classes, seed and image size in
    the checkpoint's ``meta``; the scores are computed again.
    """
    from mmolor.compat.checkpoint import load_from_local
    saved = load_from_local(checkpoint, map_location='cpu')
    meta, state = saved['meta'], saved['state_dict']
    split = upstream_split(meta['classes'], meta['seed'], meta['image_size'],
                           meta.get('matched', False))
    backbone = build_backbone()
    backbone.load_state_dict({
        k[len('backbone.'):]: v
        for k, v in state.items() if k.startswith('backbone.')
    })
    backbone.eval()
    weight = state['head.fc.weight']
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(dict(weight=weight, bias=state['head.fc.bias']))
    head.eval().requires_grad_(False)
    params = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    scores = upstream_scores(backbone, split, head=head)
    return Upstream(checkpoint, split, head, params, scores)


def prepare_scenes(data_root: str,
                   seed: int = 0,
                   num_images: Optional[Dict[str, int]] = None,
                   classes=DOWNSTREAM_CLASSES) -> str:
    """Write the downstream COCO scenes; returns ``data_root`` with a
    trailing separator, as the configs expect it."""
    write_digit_scenes(
        data_root, classes=classes, num_images=num_images, seed=seed)
    return osp.join(data_root, '')


def path_options(data_root: str, checkpoint: str) -> Dict[str, str]:
    """``--cfg-options`` that point a demo config at data and weights."""
    ann = osp.join(data_root, 'annotations', 'instances_val2017.json')
    return {
        'model.backbone.init_cfg.checkpoint': checkpoint,
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'val_evaluator.ann_file': ann,
        'test_evaluator.ann_file': ann,
    }


def read_metrics(work_dir: str) -> Dict[str, float]:
    """The last validation metrics a runner logged under ``work_dir``.

    Reads ``<work_dir>/<timestamp>/vis_data/scalars.json`` of the newest
    run (mmengine's LocalVisBackend).
    """
    files = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(f'No vis_data/scalars.json under {work_dir}')
    metrics: Dict[str, float] = {}
    with open(files[-1]) as f:
        for line in f:
            record = json.loads(line)
            if any(k.startswith('coco/') for k in record):
                metrics = record
    if not metrics:
        raise KeyError(f'No validation metrics in {files[-1]}')
    return metrics


def read_curve(log_dir: str, key: str) -> List[Tuple[int, float]]:
    """``(iteration, value)`` of every validation a runner logged in
    ``log_dir`` (its ``vis_data/scalars.json``) for the metric ``key``."""
    curve = []
    with open(osp.join(log_dir, 'vis_data', 'scalars.json')) as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                curve.append((int(record['step']), float(record[key])))
    return curve


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint a runner saved last in ``work_dir``."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def backbone_state(checkpoint: str,
                   prefix: str = 'backbone.') -> Dict[str, torch.Tensor]:
    """The ``prefix`` weights of an mmengine checkpoint, prefix removed."""
    from mmolor.compat.checkpoint import load_from_local
    state = load_from_local(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    return {
        k[len(prefix):]: v
        for k, v in state.items() if k.startswith(prefix)
    }


def _head_accuracy(head: nn.Linear, features: np.ndarray,
                   labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = head(torch.from_numpy(features).to(next(head.parameters()).dtype))
    return float((logits.argmax(1).numpy() == labels).mean())


_REFERENCES: Dict[str, Dict] = {}


def _upstream_reference(checkpoint: str, upstream: 'Upstream') -> Dict:
    """The pre-trained backbone's features of the upstream test digits and
    its old-head accuracy, with BN statistics re-estimated as
    :func:`measure_backbone` does it for a fine-tuned one (kept per
    checkpoint for the process)."""
    if checkpoint in _REFERENCES:
        return _REFERENCES[checkpoint]
    backbone = build_backbone()
    backbone.load_state_dict(backbone_state(checkpoint), strict=True)
    images, labels = upstream.split['test']
    reestimate_bn(backbone, upstream.split['train'][0])
    features = extract_features(backbone, images)
    _REFERENCES[checkpoint] = dict(
        features=features,
        head_reest=_head_accuracy(upstream.head, features, labels))
    return _REFERENCES[checkpoint]


def measure_backbone(
        state: Dict[str, torch.Tensor],
        upstream: Upstream) -> Tuple[Dict[str, float], List[Dict]]:
    """Upstream scores and per-layer drift of fine-tuned backbone weights.

    Args:
        state (dict): The fine-tuned backbone's state dict (parameters and
            buffers, no prefix).
        upstream (Upstream): The pre-trained model it started from.

    Returns:
        tuple: ``upstream_scores`` of the fine-tuned backbone (with the
        original head) and ``layer_drift`` rows (block layers). The scores
        add, with the BatchNorm statistics re-estimated on the upstream
        train digits (:func:`~benchmarks.retention.reestimate_bn`):
        ``head_reest`` (the old head) and ``head_reest_before`` (the
        pre-trained backbone, re-estimated the same way), and ``cka``, the
        linear CKA of those features to the pre-trained backbone's
        (re-estimated the same way) on the upstream test digits.
    """
    backbone = build_backbone()
    backbone.load_state_dict(state, strict=True)
    backbone.eval()
    scores = upstream_scores(backbone, upstream.split, head=upstream.head)
    after = {n: p.detach() for n, p in backbone.named_parameters()}
    drift = layer_drift(backbone, upstream.state, after, mode='block')
    reference = _upstream_reference(upstream.checkpoint, upstream)
    images, labels = upstream.split['test']
    reestimate_bn(backbone, upstream.split['train'][0])
    features = extract_features(backbone, images)
    scores.update(
        head_reest=_head_accuracy(upstream.head, features, labels),
        head_reest_before=reference['head_reest'],
        cka=linear_cka(features, reference['features']))
    return scores, drift
