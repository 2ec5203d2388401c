# Copyright (c) mmolor contributors. All rights reserved.
from .digits import (CROPS_LAYOUT, DIGIT_CLASSES, SEMANTIC_LAYOUT,
                     compose_digits, load_digit_split, render_digits,
                     write_crops, write_digit_crops, write_digit_scenes,
                     write_semantic_masks)
from .synthetic import ADE20K_LAYOUT, COCO_LAYOUT, write_ade20k, write_coco

__all__ = [
    'write_coco', 'write_ade20k', 'COCO_LAYOUT', 'ADE20K_LAYOUT',
    'load_digit_split', 'render_digits', 'compose_digits',
    'write_digit_scenes', 'write_semantic_masks', 'write_digit_crops',
    'write_crops',
    'DIGIT_CLASSES', 'SEMANTIC_LAYOUT', 'CROPS_LAYOUT'
]
