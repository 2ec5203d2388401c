# Copyright (c) mmolor contributors. All rights reserved.
"""Upstream pre-training of a small backbone on the bundled digits.

A plain PyTorch loop around an mmdet backbone built from the registry: the
backbone, global average pooling of its last stage and a linear head
classify the upstream digits (e.g. 0-4). The checkpoint keeps mmengine's
layout (``state_dict`` with ``backbone.*`` and ``head.*`` keys), so a
detector's backbone loads it with
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
"""
import copy
import logging
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger, print_log
from torch import Tensor, nn

from .datasets import compose_digits, load_digit_split, render_digits

__all__ = [
    'DEMO_BACKBONE', 'UpstreamClassifier', 'build_backbone', 'to_inputs',
    'upstream_split', 'pretrain_upstream', 'save_upstream'
]

# The demo's backbone: a ResNet-18 at a quarter of the width (stages of 16,
# 32, 64 and 128 channels, 0.7 M parameters). The downstream configs use the
# same arguments (configs/demo/).
DEMO_BACKBONE = dict(
    type='ResNet',
    depth=18,
    base_channels=16,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=False,
    style='pytorch')

# mmdet's DetDataPreprocessor normalisation (ImageNet statistics, RGB), so
# the backbone sees upstream digits as it later sees the downstream scenes.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def build_backbone(cfg: Optional[dict] = None) -> nn.Module:
    """Build a backbone from mmdet's registry (default: ``DEMO_BACKBONE``).

    Args:
        cfg (dict, optional): The backbone config. Defaults to None.

    Returns:
        nn.Module: The backbone, randomly initialised (``init_weights``).
    """
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    # mmdet's, whatever scope a runner of another codebase left current.
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(copy.deepcopy(cfg or DEMO_BACKBONE))
    # Without a log file, init_weights prints one block per parameter.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        backbone.init_weights()
    finally:
        logger.setLevel(level)
    return backbone


def _out_channels(backbone: nn.Module, size: int = 32) -> int:
    with torch.no_grad():
        training = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(1, 3, size, size))[-1]
        backbone.train(training)
    return out.shape[1]


class LinearHead(nn.Module):
    """A linear layer named as in mmpretrain's ``LinearClsHead`` (``fc``),
    so an ImageClassifier loads the upstream checkpoint's head."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class UpstreamClassifier(nn.Module):
    """Backbone, global average pooling of the last stage, linear head.

    Args:
        backbone (nn.Module): An mmdet/mmseg backbone returning a tuple of
            feature maps.
        num_classes (int): Upstream classes.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = LinearHead(_out_channels(backbone), num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Pooled features of the backbone's last stage, ``(N, C)``."""
        return self.backbone(x)[-1].mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def to_inputs(images: np.ndarray) -> Tensor:
    """uint8 ``(N, H, W)`` grey images -> normalised ``(N, 3, H, W)``."""
    x = torch.from_numpy(images).float()[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: Tensor, rng: torch.Generator, shift: int) -> Tensor:
    """Random translation by up to ``shift`` pixels (zero-padded)."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (shift, ) * 4, value=float(x.min()))
    dx, dy = torch.randint(0, 2 * shift + 1, (2, ), generator=rng).tolist()
    return pad[:, :, dy:dy + h, dx:dx + w]


def upstream_split(classes: Sequence[int],
                   seed: int = 0,
                   image_size: int = 32,
                   matched: bool = False) -> Dict[str, Tuple]:
    """The upstream task's images: the digits of ``classes`` split into
    train and held-out (:func:`~benchmarks.datasets.load_digit_split`),
    each rendered once, as clean centred crops or (``matched``) in the
    downstream scenes' statistics
    (:func:`~benchmarks.datasets.compose_digits`, seeded by ``seed``).

    Returns:
        dict: ``{'train': (images, labels), 'test': (images, labels)}``
        with uint8 ``(N, image_size, image_size)`` images.
    """
    split = load_digit_split(classes, seed=seed)
    if not matched:
        return {
            k: (render_digits(images, image_size), labels)
            for k, (images, labels) in split.items()
        }
    rng = np.random.default_rng(seed + 3)
    return {
        k: (compose_digits(images, image_size, rng), labels)
        for k, (images, labels) in split.items()
    }


def pretrain_upstream(
        classes: Sequence[int] = (0, 1, 2, 3, 4),
        image_size: int = 32,
        steps: int = 300,
        batch_size: int = 64,
        lr: float = 2e-3,
        shift: int = 3,
        seed: int = 0,
        matched: bool = False,
        backbone_cfg: Optional[dict] = None,
        log_interval: int = 50) -> Tuple[UpstreamClassifier, Dict[str, Tuple]]:
    """Pre-train a backbone on the upstream digits (Adam, cross-entropy).

    Args:
        classes (Sequence[int]): Upstream digits. Defaults to (0, ..., 4).
        image_size (int): Digits are upscaled from 8x8 to this side.
            Defaults to 32.
        steps (int): Optimizer steps. Defaults to 300.
        batch_size (int): Images per step. Defaults to 64.
        lr (float): Adam's learning rate (cosine-decayed to 0). Defaults to
            2e-3.
        shift (int): Random translation of clean crops, in pixels.
            Defaults to 3.
        seed (int): Seed of the data split, initialisation and batches.
            Defaults to 0.
        matched (bool): Draw every batch in the downstream scenes'
            low-level statistics (noisy background, random scale, place
            and brightness; :func:`~benchmarks.datasets.compose_digits`)
            instead of clean crops shifted by up to ``shift`` pixels; the
            returned split is rendered the same way
            (:func:`upstream_split`). Defaults to False.
        backbone_cfg (dict, optional): Defaults to ``DEMO_BACKBONE``.
        log_interval (int): Log the loss every this many steps. Defaults
            to 50.

    Returns:
        tuple: The trained classifier (in eval mode) and the data split,
        ``{'train': (images, labels), 'test': (images, labels)}`` with
        uint8 ``(N, image_size, image_size)`` images.
    """
    torch.manual_seed(seed)
    split = upstream_split(classes, seed, image_size, matched)
    model = UpstreamClassifier(build_backbone(backbone_cfg), len(classes))
    glyphs = load_digit_split(classes, seed=seed)['train'][0]
    x_train = to_inputs(split['train'][0])
    y_train = torch.from_numpy(split['train'][1])
    compose_rng = np.random.default_rng(seed + 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = torch.Generator().manual_seed(seed)
    model.train()
    start = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(x_train), (batch_size, ), generator=rng)
        if matched:
            x = to_inputs(
                compose_digits(glyphs[index.numpy()], image_size,
                               compose_rng))
        else:
            x = _augment(x_train[index], rng, shift)
        logits = model(x)
        loss = F.cross_entropy(logits, y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % log_interval == 0 or step == steps:
            acc = (logits.argmax(1) == y_train[index]).float().mean()
            print_log(
                f'upstream step {step}/{steps}  loss {loss.item():.4f}  '
                f'batch acc {acc.item():.3f}  {time.time() - start:.1f}s',
                logger='current')
    model.eval()
    return model, split


def save_upstream(model: UpstreamClassifier,
                  path: str,
                  meta: Optional[dict] = None) -> None:
    """Save ``state_dict`` (``backbone.*``, ``head.fc.*``) and ``meta``."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(dict(state_dict=state, meta=dict(meta or {})), path)
