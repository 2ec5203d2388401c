# Copyright (c) mmolor contributors. All rights reserved.
"""Write tiny COCO- and ADE20K-format datasets to disk.

Real files in the real layouts, read by mmdet's ``CocoDataset`` /
``CocoMetric`` and mmseg's ``ADE20KDataset`` / ``IoUMetric`` unchanged: for
tests and smoke runs of the shipped configs, no download needed. Images are
noise with coloured rectangles and ellipses; every shape is an object (box +
polygon mask) or a labelled region.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['write_coco', 'write_ade20k', 'COCO_LAYOUT', 'ADE20K_LAYOUT']

# Relative paths, as the mmdet / mmseg dataset configs expect them.
COCO_LAYOUT = dict(train=('annotations/instances_train2017.json',
                          'train2017/'),
                   val=('annotations/instances_val2017.json', 'val2017/'),
                   test=('annotations/instances_test2017.json', 'test2017/'))
ADE20K_LAYOUT = dict(train=('images/training', 'annotations/training'),
                     val=('images/validation', 'annotations/validation'))


def _shape_polygon(rng: np.random.Generator, h: int,
                   w: int) -> np.ndarray:
    """A random rectangle or ellipse inside an ``h x w`` image, as an
    ``(N, 2)`` float polygon in (x, y)."""
    bw = rng.uniform(0.2, 0.5) * w
    bh = rng.uniform(0.2, 0.5) * h
    x0 = rng.uniform(0, w - bw - 1)
    y0 = rng.uniform(0, h - bh - 1)
    if rng.random() < 0.5:
        return np.array([[x0, y0], [x0 + bw, y0], [x0 + bw, y0 + bh],
                         [x0, y0 + bh]])
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return np.stack([x0 + bw / 2 * (1 + np.cos(t)),
                     y0 + bh / 2 * (1 + np.sin(t))], axis=1)


def _colours(num: int, seed: int = 1234) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 255, size=(num, 3))


def write_coco(data_root: str,
               num_images: Optional[Dict[str, int]] = None,
               image_size: Tuple[int, int] = (96, 128),
               classes: Optional[Sequence[str]] = None,
               max_objects: int = 3,
               seed: int = 0) -> Dict[str, str]:
    """Write a COCO instance-segmentation dataset (boxes + polygon masks).

    Args:
        data_root (str): Where to write; gets ``annotations/``,
            ``train2017/`` and ``val2017/`` as mmdet's COCO configs expect.
        num_images (dict, optional): Images per split (``train``, ``val``).
            Defaults to ``dict(train=4, val=2)``.
        image_size (tuple[int, int]): ``(height, width)``. Defaults to
            (96, 128).
        classes (Sequence[str], optional): Category names; objects use the
            first ``min(len(classes), 4)``. Defaults to mmdet's 80 COCO
            classes, so ``CocoDataset`` finds its categories.
        max_objects (int): At most this many objects per image (at least
            one). Defaults to 3.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: split name -> annotation file path.
    """
    if classes is None:
        from mmdet.datasets import CocoDataset
        classes = CocoDataset.METAINFO['classes']
    num_images = num_images or dict(train=4, val=2)
    rng = np.random.default_rng(seed)
    used = min(len(classes), 4)
    colours = _colours(used)
    h, w = image_size
    categories = [dict(id=i + 1, name=n, supercategory='none')
                  for i, n in enumerate(classes)]
    written = {}
    image_id = ann_id = 0
    for split, count in num_images.items():
        ann_rel, img_rel = COCO_LAYOUT[split]
        os.makedirs(osp.join(data_root, img_rel), exist_ok=True)
        os.makedirs(osp.dirname(osp.join(data_root, ann_rel)), exist_ok=True)
        images: List[dict] = []
        annotations: List[dict] = []
        for _ in range(count):
            image_id += 1
            img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            for _ in range(int(rng.integers(1, max_objects + 1))):
                label = int(rng.integers(0, used))
                poly = _shape_polygon(rng, h, w)
                cv2.fillPoly(img, [poly.round().astype(np.int32)],
                             colours[label].tolist())
                ann_id += 1
                x0, y0 = poly.min(axis=0)
                x1, y1 = poly.max(axis=0)
                annotations.append(
                    dict(id=ann_id, image_id=image_id,
                         category_id=label + 1,
                         bbox=[float(x0), float(y0), float(x1 - x0),
                               float(y1 - y0)],
                         area=float(cv2.contourArea(
                             poly.astype(np.float32))),
                         segmentation=[poly.ravel().round(2).tolist()],
                         iscrowd=0))
            name = f'{image_id:012d}.jpg'
            cv2.imwrite(osp.join(data_root, img_rel, name), img)
            images.append(dict(id=image_id, file_name=name, height=h,
                               width=w))
        path = osp.join(data_root, ann_rel)
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
        written[split] = path
    return written


def write_ade20k(data_root: str,
                 num_images: Optional[Dict[str, int]] = None,
                 image_size: Tuple[int, int] = (64, 64),
                 num_labels: int = 4,
                 seed: int = 0) -> Dict[str, str]:
    """Write an ADE20K-format semantic segmentation dataset.

    Label PNGs follow ADE20K: 0 is "other" (ignored with
    ``reduce_zero_label=True``), 1..150 are the classes. The background of
    every image is class 1; shapes are classes 2..``num_labels``, with some
    pixels left at 0.

    Args:
        data_root (str): Where to write (``images/{training,validation}``,
            ``annotations/{training,validation}``).
        num_images (dict, optional): Images per split (``train``, ``val``).
            Defaults to ``dict(train=4, val=2)``.
        image_size (tuple[int, int]): ``(height, width)``. Defaults to
            (64, 64).
        num_labels (int): Labels used, from 1. Defaults to 4.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: split name -> image directory.
    """
    num_images = num_images or dict(train=4, val=2)
    rng = np.random.default_rng(seed)
    colours = _colours(num_labels + 1)
    h, w = image_size
    written = {}
    index = 0
    for split, count in num_images.items():
        img_rel, ann_rel = ADE20K_LAYOUT[split]
        for rel in (img_rel, ann_rel):
            os.makedirs(osp.join(data_root, rel), exist_ok=True)
        for _ in range(count):
            index += 1
            label = np.ones((h, w), dtype=np.uint8)
            label[:2] = 0  # a strip of "other"
            for _ in range(int(rng.integers(1, 4))):
                poly = _shape_polygon(rng, h, w).round().astype(np.int32)
                cv2.fillPoly(label, [poly],
                             int(rng.integers(2, num_labels + 1)))
            img = colours[label].astype(np.int64) + rng.integers(
                -20, 20, size=(h, w, 3))
            name = f'ADE_{split}_{index:08d}'
            cv2.imwrite(osp.join(data_root, img_rel, name + '.jpg'),
                        img.clip(0, 255).astype(np.uint8))
            cv2.imwrite(osp.join(data_root, ann_rel, name + '.png'), label)
        written[split] = osp.join(data_root, img_rel)
    return written
