# Copyright (c) mmolor contributors. All rights reserved.
"""Real data that ships with scikit-learn: the handwritten digits.

``sklearn.datasets.load_digits`` (1,797 8x8 grey images of the digits 0-9,
bundled inside the scikit-learn package, so nothing is downloaded) is split
by class into an *upstream* task (classify some digits, e.g. 0-4) and a
*downstream* task (detect and segment the other digits, e.g. 5-9, in
composed scenes written in COCO format). Each class's images are split into
a train part and a held-out part once, by a seeded permutation, so upstream
retention and downstream accuracy are measured on images no model trained
on.
"""
import contextlib
import io
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .synthetic import COCO_LAYOUT

__all__ = [
    'load_digit_split', 'render_digits', 'compose_digits',
    'write_digit_scenes', 'write_semantic_masks', 'write_digit_crops',
    'DIGIT_CLASSES', 'SEMANTIC_LAYOUT', 'CROPS_LAYOUT'
]

# Category names of the downstream scenes, by digit.
DIGIT_CLASSES = tuple(f'digit_{d}' for d in range(10))


def load_digit_split(
        classes: Sequence[int],
        held_out: float = 0.3,
        seed: int = 0) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The bundled digits of ``classes``, split into train and held-out.

    Args:
        classes (Sequence[int]): Digits to keep; label ``i`` of the result
            is ``classes[i]``.
        held_out (float): Fraction of every class kept out of training, in
            (0, 1). Defaults to 0.3.
        seed (int): Seed of the per-class permutation. Defaults to 0.

    Returns:
        dict: ``{'train': (images, labels), 'test': (images, labels)}``;
        images are ``(N, 8, 8)`` float arrays in [0, 16], labels are
        ``int64`` indices into ``classes``.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < held_out < 1.0:
        raise ValueError(f'Invalid held_out: {held_out} (must be in (0, 1))')
    classes = [int(c) for c in classes]
    if not classes or len(
            set(classes)) != len(classes) or not all(0 <= c <= 9
                                                     for c in classes):
        raise ValueError(f'Invalid classes: {classes} (distinct digits 0-9)')
    digits = load_digits()
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = dict(train=[], test=[])
    labels: Dict[str, List[np.ndarray]] = dict(train=[], test=[])
    for label, digit in enumerate(classes):
        index = rng.permutation(np.flatnonzero(digits.target == digit))
        cut = int(round(len(index) * held_out))
        for split, idx in (('test', index[:cut]), ('train', index[cut:])):
            parts[split].append(digits.images[idx])
            labels[split].append(np.full(len(idx), label, dtype=np.int64))
    return {
        split: (np.concatenate(parts[split]).astype(np.float32),
                np.concatenate(labels[split]))
        for split in parts
    }


def render_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Upscale 8x8 digits (values in [0, 16]) to ``size x size`` uint8.

    Args:
        images (np.ndarray): ``(N, 8, 8)`` or ``(8, 8)`` digits.
        size (int): Output side in pixels.

    Returns:
        np.ndarray: ``(N, size, size)`` (or ``(size, size)``) uint8 images,
        ink bright (255) on black (0).
    """
    single = images.ndim == 2
    batch = images[None] if single else images
    out = np.stack([
        cv2.resize(
            img * (255.0 / 16.0), (size, size), interpolation=cv2.INTER_LINEAR)
        for img in batch
    ]).clip(0, 255).round().astype(np.uint8)
    return out[0] if single else out


def compose_digits(images: np.ndarray,
                   size: int,
                   rng: np.random.Generator,
                   scale: Tuple[float, float] = (0.6, 1.0),
                   brightness: Tuple[float, float] = (0.7, 1.0),
                   noise: int = 48) -> np.ndarray:
    """Digits in the scenes' low-level statistics: each glyph at a random
    scale, place and brightness on a noisy dark canvas.

    The scenes of :func:`write_digit_scenes` draw every digit this way
    (noise in ``[0, noise)``, brightness in ``brightness``), so crops
    composed here share their statistics.

    Args:
        images (np.ndarray): ``(N, 8, 8)`` digits in [0, 16].
        size (int): Side of the output images.
        rng (np.random.Generator): The source of every draw.
        scale (tuple[float, float]): Glyph side as a fraction of ``size``.
            Defaults to (0.6, 1.0).
        brightness (tuple[float, float]): Ink brightness factor. Defaults
            to (0.7, 1.0).
        noise (int): Background values are uniform in ``[0, noise)``.
            Defaults to 48.

    Returns:
        np.ndarray: ``(N, size, size)`` uint8 images.
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f'Invalid scale: {scale} (need 0 < min <= max <= 1)')
    out = rng.integers(0, noise, size=(len(images), size, size))
    for canvas, image in zip(out, images):
        side = max(8, int(round(size * rng.uniform(*scale))))
        x0, y0 = rng.integers(0, size - side + 1, size=2)
        glyph = render_digits(image, side) * rng.uniform(*brightness)
        window = canvas[y0:y0 + side, x0:x0 + side]
        np.maximum(window, glyph.astype(np.int64), out=window)
    return out.clip(0, 255).astype(np.uint8)


def _place(rng: np.random.Generator,
           boxes: List[Tuple[int, int, int, int]],
           size: int,
           h: int,
           w: int,
           tries: int = 50) -> Optional[Tuple[int, int]]:
    """A top-left corner for a ``size`` square that overlaps no box."""
    for _ in range(tries):
        x0 = int(rng.integers(0, w - size + 1))
        y0 = int(rng.integers(0, h - size + 1))
        if all(x0 + size <= bx0 or bx1 <= x0 or y0 + size <= by0 or by1 <= y0
               for bx0, by0, bx1, by1 in boxes):
            return x0, y0
    return None


def _mask_annotation(mask: np.ndarray) -> Optional[dict]:
    """Box, area and polygons of a binary mask (None if it is empty)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    # COCO polygons need at least three points. Contour points are pixel
    # indices; +0.5 puts them on pixel centres, COCO's continuous frame.
    polygons = [(c.reshape(-1) + 0.5).tolist() for c in contours
                if len(c) >= 3]
    if not polygons:
        return None
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return dict(
        bbox=[float(x0), float(y0),
              float(x1 - x0),
              float(y1 - y0)],
        area=float(mask.sum()),
        segmentation=polygons)


def write_digit_scenes(data_root: str,
                       classes: Sequence[int] = (5, 6, 7, 8, 9),
                       num_images: Optional[Dict[str, int]] = None,
                       image_size: Tuple[int, int] = (128, 128),
                       glyph_size: Tuple[int, int] = (24, 48),
                       max_objects: int = 4,
                       ink_threshold: float = 0.35,
                       held_out: float = 0.3,
                       seed: int = 0) -> Dict[str, str]:
    """Compose scenes of bundled digits and write them in COCO format.

    Each scene is a dark, noisy canvas with 1 to ``max_objects``
    non-overlapping digits of ``classes``, each upscaled to a random size and
    brightness. An object's mask is the digit's ink (the upscaled glyph above
    ``ink_threshold`` of its peak), its polygons the mask's outer contours
    (``cv2.findContours``, so the holes of 0, 6, 8, 9 are filled) and its box
    the mask's extent. ``train`` scenes use the train part of the digits,
    ``val`` and ``test`` scenes the held-out part (:func:`load_digit_split`):
    new scenes each, drawn after the splits before them, so adding
    ``test`` leaves ``train`` and ``val`` as they were.

    Args:
        data_root (str): Where to write (``annotations/``, ``train2017/``,
            ``val2017/``, as :func:`~benchmarks.datasets.write_coco`).
        classes (Sequence[int]): Digits in the scenes; category ``i + 1`` is
            ``digit_{classes[i]}``. Defaults to (5, 6, 7, 8, 9).
        num_images (dict, optional): Scenes per split (``train``, ``val``,
            ``test``, in this order). Defaults to ``dict(train=200,
            val=50)``.
        image_size (tuple[int, int]): ``(height, width)``. Defaults to
            (128, 128).
        glyph_size (tuple[int, int]): Smallest and largest digit side in
            pixels. Defaults to (24, 48).
        max_objects (int): At most this many digits per scene (at least
            one). Defaults to 4.
        ink_threshold (float): Mask threshold, as a fraction of the glyph's
            peak. Defaults to 0.35.
        held_out (float): As for :func:`load_digit_split`. Defaults to 0.3.
        seed (int): Seed of the split and of the composition. Defaults to 0.

    Returns:
        dict: split name -> annotation file path.
    """
    num_images = num_images or dict(train=200, val=50)
    h, w = image_size
    lo, hi = glyph_size
    if not 8 <= lo <= hi <= min(h, w):
        raise ValueError(f'Invalid glyph_size: {glyph_size} (need 8 <= min '
                         f'<= max <= the image side, {min(h, w)})')
    split = load_digit_split(classes, held_out=held_out, seed=seed)
    source = dict(train='train', val='test', test='test')
    rng = np.random.default_rng(seed + 1)
    categories = [
        dict(id=i + 1, name=DIGIT_CLASSES[c], supercategory='digit')
        for i, c in enumerate(classes)
    ]
    written = {}
    image_id = ann_id = 0
    for name, count in num_images.items():
        glyphs, labels = split[source[name]]
        ann_rel, img_rel = COCO_LAYOUT[name]
        os.makedirs(osp.join(data_root, img_rel), exist_ok=True)
        os.makedirs(osp.dirname(osp.join(data_root, ann_rel)), exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            canvas = rng.integers(0, 48, size=(h, w), dtype=np.int64)
            boxes: List[Tuple[int, int, int, int]] = []
            for _ in range(int(rng.integers(1, max_objects + 1))):
                size = int(rng.integers(lo, hi + 1))
                corner = _place(rng, boxes, size, h, w)
                if corner is None:
                    continue
                x0, y0 = corner
                k = int(rng.integers(len(glyphs)))
                glyph = render_digits(glyphs[k], size).astype(np.int64)
                mask = (glyph > ink_threshold * glyph.max()).astype(np.uint8)
                ann = _mask_annotation(mask)
                if ann is None:
                    continue
                brightness = rng.uniform(0.7, 1.0)
                window = canvas[y0:y0 + size, x0:x0 + size]
                np.maximum(
                    window, (glyph * brightness).astype(np.int64), out=window)
                boxes.append((x0, y0, x0 + size, y0 + size))
                ann_id += 1
                bx, by, bw, bh = ann['bbox']
                ann.update(
                    id=ann_id,
                    image_id=image_id,
                    category_id=int(labels[k]) + 1,
                    bbox=[bx + x0, by + y0, bw, bh],
                    segmentation=[(np.array(p).reshape(-1, 2) +
                                   (x0, y0)).ravel().tolist()
                                  for p in ann['segmentation']],
                    iscrowd=0)
                annotations.append(ann)
            file_name = f'{image_id:012d}.png'
            img = np.repeat(
                canvas.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
            cv2.imwrite(osp.join(data_root, img_rel, file_name), img)
            images.append(
                dict(id=image_id, file_name=file_name, height=h, width=w))
        path = osp.join(data_root, ann_rel)
        with open(path, 'w') as f:
            json.dump(
                dict(
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
        written[name] = path
    return written


# Semantic label maps of the scenes (written beside COCO's image folders):
# one PNG per scene, 0 = background, i + 1 = the scene's category i + 1.
SEMANTIC_LAYOUT = dict(
    train=('train2017/', 'semantic_train2017/'),
    val=('val2017/', 'semantic_val2017/'),
    test=('test2017/', 'semantic_test2017/'))


def write_semantic_masks(data_root: str) -> Dict[str, str]:
    """Write the semantic label maps of scenes :func:`write_digit_scenes`
    wrote: each pixel gets the category id of the object mask covering it
    (the COCO polygons), 0 elsewhere.

    Returns:
        dict: split name -> label folder.
    """
    from pycocotools.coco import COCO

    written = {}
    for name, (ann_rel, _) in COCO_LAYOUT.items():
        ann = osp.join(data_root, ann_rel)
        if not osp.exists(ann):
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # its progress
            coco = COCO(ann)
        out_dir = osp.join(data_root, SEMANTIC_LAYOUT[name][1])
        os.makedirs(out_dir, exist_ok=True)
        for img in coco.loadImgs(coco.getImgIds()):
            label = np.zeros((img['height'], img['width']), np.uint8)
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
                label[coco.annToMask(a) > 0] = a['category_id']
            cv2.imwrite(osp.join(out_dir, img['file_name']), label)
        written[name] = out_dir
    return written


# Classification crops: image folders and mmpretrain annotation files
# ("<relative path> <label>" per line).
CROPS_LAYOUT = dict(
    train=('crops/train.txt', 'crops/train/'),
    val=('crops/val.txt', 'crops/val/'),
    test=('crops/test.txt', 'crops/test/'))


def write_digit_crops(data_root: str,
                      classes: Sequence[int] = (5, 6, 7, 8, 9),
                      num_images: Optional[Dict[str, int]] = None,
                      image_size: int = 32,
                      held_out: float = 0.3,
                      seed: int = 0) -> Dict[str, str]:
    """Write digit crops in the scenes' statistics for classification.

    Every image is one digit of ``classes`` composed by
    :func:`compose_digits`; ``train`` uses the train part of the digits,
    ``val`` and ``test`` the held-out part (:func:`load_digit_split`), new
    crops each (``test`` drawn after ``val``, which it leaves as it was). Label ``i`` is
    ``classes[i]``. Images are drawn class by class in turn, so every class
    has ``count // len(classes)`` or one more.

    Args:
        data_root (str): Where ``crops/`` goes.
        classes (Sequence[int]): The digits. Defaults to (5, 6, 7, 8, 9).
        num_images (dict, optional): Images per split (``train``, ``val``,
            ``test``, in this order). Defaults to ``dict(train=100,
            val=300)``.
        image_size (int): Side in pixels. Defaults to 32.
        held_out (float): As for :func:`load_digit_split`. Defaults to 0.3.
        seed (int): Seed of the split and of the composition. Defaults
            to 0.

    Returns:
        dict: split name -> annotation file path.
    """
    num_images = num_images or dict(train=100, val=300)
    split = load_digit_split(classes, held_out=held_out, seed=seed)
    source = dict(train='train', val='test', test='test')
    rng = np.random.default_rng(seed + 2)
    written = {}
    for name, count in num_images.items():
        glyphs, labels = split[source[name]]
        by_class = [rng.permutation(np.flatnonzero(labels == c))
                    for c in range(len(classes))]
        index = np.array([
            by_class[i % len(classes)][(i // len(classes)) %
                                       len(by_class[i % len(classes)])]
            for i in range(count)
        ], dtype=np.int64)
        images = compose_digits(glyphs[index], image_size, rng)
        written[name] = write_crops(data_root, name, images, labels[index])
    return written


def write_crops(data_root: str, split: str, images: Sequence[np.ndarray],
                labels: Sequence[int]) -> str:
    """Write ``images`` with their ``labels`` as the ``split`` part of
    :data:`CROPS_LAYOUT` under ``data_root``: PNGs and the mmpretrain
    annotation file; returns the file."""
    ann_rel, img_rel = CROPS_LAYOUT[split]
    os.makedirs(osp.join(data_root, img_rel), exist_ok=True)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        file_name = f'{i:06d}.png'
        cv2.imwrite(osp.join(data_root, img_rel, file_name), image)
        lines.append(f'{file_name} {int(label)}')
    path = osp.join(data_root, ann_rel)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path
