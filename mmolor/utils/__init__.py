# Copyright (c) mmolor contributors. All rights reserved.
"""Fixes for running the OpenMMLab stack on current torch versions.

Importing this package (``import mmolor`` does) calls
:func:`patch_checkpoint_loading`, so mmengine checkpoints load again on
torch >= 2.6.
"""
from .checkpoint import load_from_local, patch_checkpoint_loading
from .dist import has_accelerator, init_cpu_dist, prepare_dist
from .setup_env import setup_scope

patch_checkpoint_loading()

__all__ = [
    'patch_checkpoint_loading', 'load_from_local', 'prepare_dist',
    'init_cpu_dist', 'has_accelerator', 'setup_scope'
]
