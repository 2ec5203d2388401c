# Copyright (c) mmolor contributors. All rights reserved.
"""How much of the upstream task a backbone still solves.

Three instruments, from the most forgiving to the most sensitive:

- ``knn``: a 5-nearest-neighbour classifier (cosine) on the backbone's
  pooled features of the upstream train digits, scored on the held-out
  ones;
- ``probe``: a logistic-regression probe refit on the same features;
- ``head``: the original upstream head, kept as it was after pre-training,
  on the fine-tuned backbone's features (no refitting). Refit probes barely
  notice forgetting on easy data; the old head does.

The old head reads features through the backbone's BatchNorm running
statistics, which fine-tuning re-estimates on downstream data (unless the
config freezes them, as mmdet's ``norm_eval=True`` does) and which no
optimizer rolls back. :func:`reestimate_bn` re-estimates them on upstream
images, so the old head measures what the weights kept;
:func:`linear_cka` compares representations without any head.

:func:`old_head_accuracy` measures the last one as a user would, with
:func:`mmolor.evaluation.upstream_retention` (the command line
``tools/analysis_tools/upstream_retention.py``): the upstream model as an
mmpretrain ImageClassifier, evaluated by its runner with each fine-tuned
backbone swapped in.
"""
import contextlib
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .upstream import to_inputs

__all__ = [
    'extract_features', 'upstream_scores', 'old_head_accuracy',
    'reestimate_bn', 'linear_cka'
]

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# The upstream model as an mmpretrain ImageClassifier: the benchmark's cls
# config (same backbone, pooling and linear head).
UPSTREAM_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo',
                           'resnet18-w16_adamw_300i_digit-crops.py')


@torch.no_grad()
def extract_features(backbone: nn.Module,
                     images: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
    """Global-average-pooled last-stage features, ``(N, C)`` float64.

    Args:
        backbone (nn.Module): Put in eval mode (BN running statistics)
            while the features are taken, then restored.
        images (np.ndarray): uint8 ``(N, H, W)`` grey images.
        batch_size (int): Images per forward pass. Defaults to 256.
    """
    training = backbone.training
    backbone.eval()
    try:
        feats = [
            backbone(to_inputs(
                images[i:i + batch_size]))[-1].mean(dim=(2, 3)).double()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        backbone.train(training)
    return torch.cat(feats).numpy()


@torch.no_grad()
def reestimate_bn(backbone: nn.Module,
                  images: np.ndarray,
                  batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images``.

    The statistics are reset and averaged over the batches with equal
    weight (``momentum=None``: torch's cumulative average) in train-mode
    forward passes without gradients; the weights are not touched. The
    backbone is left in eval mode, its BatchNorm momenta as they were.

    Returns:
        nn.Module: ``backbone``.
    """
    norms = [
        m for m in backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    momenta = [m.momentum for m in norms]
    backbone.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()  # also where the backbone's `norm_eval` would keep eval
    try:
        for i in range(0, len(images), batch_size):
            backbone(to_inputs(images[i:i + batch_size]))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        backbone.eval()
    return backbone


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two feature matrices of the same
    examples, ``(N, C1)`` and ``(N, C2)`` (Kornblith et al., ICML 2019): 1
    for representations equal up to rotation and isotropic scaling.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, columns centred.
    """
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(y.T @ x)**2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def upstream_scores(backbone: nn.Module,
                    split: Dict[str, Tuple[np.ndarray, np.ndarray]],
                    head: Optional[nn.Linear] = None,
                    k: int = 5) -> Dict[str, float]:
    """Upstream accuracy of a backbone on held-out digits, in [0, 1].

    Args:
        backbone (nn.Module): The backbone to score.
        split (dict): ``{'train': (images, labels), 'test': (images,
            labels)}`` of the upstream task (uint8 images).
        head (nn.Linear, optional): The upstream head; adds ``head``.
            Defaults to None.
        k (int): Neighbours of the kNN classifier. Defaults to 5.

    Returns:
        dict: ``knn``, ``probe`` and (with ``head``) ``head`` accuracies.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_test, y_test) = split['train'], split['test']
    f_train = extract_features(backbone, x_train)
    f_test = extract_features(backbone, x_test)

    def unit(f):
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    knn = KNeighborsClassifier(n_neighbors=k).fit(unit(f_train), y_train)
    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(max_iter=2000)).fit(
                              f_train, y_train)
    scores = dict(
        knn=float(knn.score(unit(f_test), y_test)),
        probe=float(probe.score(f_test, y_test)))
    if head is not None:
        with torch.no_grad():
            logits = head(
                torch.from_numpy(f_test).to(next(head.parameters()).dtype))
        scores['head'] = float((logits.argmax(1).numpy() == y_test).mean())
    return scores


def old_head_accuracy(upstream: str, classes: Sequence[int], test_root: str,
                      checkpoints: Sequence[str],
                      work_dir: str) -> Tuple[float, List[float]]:
    """Accuracy of the upstream classifier, as it was and with each
    checkpoint's backbone in place of its own (head kept), on held-out
    upstream digits, in [0, 1].

    Runs :func:`mmolor.evaluation.upstream_retention`: the upstream model
    is :data:`UPSTREAM_CONFIG` with ``len(classes)`` classes, its test set
    the images under ``test_root`` (``crops/val.txt``). What
    ``upstream_retention.py`` would print and write goes into
    ``work_dir``.

    Args:
        upstream (str): The upstream checkpoint (``backbone.*``,
            ``head.fc.*``).
        classes (Sequence[int]): The upstream digits.
        test_root (str): The held-out upstream digits
            (:func:`~benchmarks.protocol.write_upstream_test_set`).
        checkpoints (Sequence[str]): Fine-tuned checkpoints.
        work_dir (str): Where the config, logs and JSON go.

    Returns:
        tuple: The upstream model's accuracy and one per checkpoint.
    """
    from mmengine.config import Config

    from mmolor.evaluation import format_table, upstream_retention, write_json
    os.makedirs(work_dir, exist_ok=True)
    cfg = Config.fromfile(UPSTREAM_CONFIG)
    names = tuple(f'digit_{c}' for c in classes)
    cfg.merge_from_dict({
        'model.backbone.init_cfg': None,
        'model.head.num_classes': len(names),
        'data_preprocessor.num_classes': len(names),
        'test_dataloader.dataset.data_root': test_root,
        'test_dataloader.dataset.metainfo': dict(classes=names),
        'log_level': 'WARNING',
    })
    config = osp.join(work_dir, 'upstream_classifier.py')
    cfg.dump(config)
    # The runner's log and the tool's output, as upstream_retention.py
    # prints them.
    with open(osp.join(work_dir, 'upstream_retention.txt'), 'w') as out, \
            contextlib.redirect_stdout(out):
        result = upstream_retention(
            config, upstream, list(checkpoints), work_dir=work_dir)
        print(format_table(result['upstream'], result['checkpoints']))
        print(write_json(result, work_dir))
    return (result['upstream']['metrics']['accuracy/top1'] / 100, [
        c['metrics']['accuracy/top1'] / 100 for c in result['checkpoints']
    ])
