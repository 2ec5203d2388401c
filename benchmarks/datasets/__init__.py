# Copyright (c) mmolor contributors. All rights reserved.
from .digits import (DIGIT_CLASSES, load_digit_split, render_digits,
                     write_digit_scenes)
from .synthetic import ADE20K_LAYOUT, COCO_LAYOUT, write_ade20k, write_coco

__all__ = [
    'write_coco', 'write_ade20k', 'COCO_LAYOUT', 'ADE20K_LAYOUT',
    'load_digit_split', 'render_digits', 'write_digit_scenes', 'DIGIT_CLASSES'
]
