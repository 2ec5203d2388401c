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
"""
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .upstream import to_inputs

__all__ = ['extract_features', 'upstream_scores']


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
            logits = head(torch.from_numpy(f_test).to(head.weight.dtype))
        scores['head'] = float((logits.argmax(1).numpy() == y_test).mean())
    return scores
