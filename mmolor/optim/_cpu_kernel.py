# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's fused CPU kernel (``csrc/olor_cpu.cpp``), compiled at install.

The kernel takes the AdamW / Adam / SGD step and the review in one pass
over memory, on torch's intra-op threads. ``setup.py`` compiles it with
torch's ``BuildExtension`` and OpenMP when mmolor is installed, into
``mmolor.optim._olor_cpu``; a process only imports it. Nothing is compiled
at training time: no process needs a C++ compiler, and none waits on a
build lock. Where mmolor was installed without it (no C++ compiler or no
torch at install time, ``MMOLOR_WITH_KERNEL=0``), or where it no longer
loads (torch changed since the install), OLOR warns once and takes torch's
step (in the mode the group asks for) followed by the review instead: the
same update, one more pass over memory. ``MMOLOR_CPU_KERNEL=0`` switches it off without a warning.
"""
import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Optional

import torch  # noqa: F401  the kernel links torch's libraries

__all__ = ['cpu_kernel', 'cpu_kernel_error']

_error: Optional[str] = None


@functools.lru_cache(maxsize=None)
def cpu_kernel() -> Optional[ModuleType]:
    """The compiled kernel module, or None when it is unavailable.

    Imports it on the first call (about a millisecond); a failed import
    warns once and is not retried. :func:`cpu_kernel_error` says why it is
    unavailable. The answer is cached (``functools.lru_cache``):
    ``cpu_kernel.cache_clear()`` makes the next call look again, e.g. after
    ``MMOLOR_CPU_KERNEL`` changed.

    Returns:
        ModuleType, optional: ``mmolor.optim._olor_cpu``, or None.
    """
    global _error
    _error = None
    if os.environ.get('MMOLOR_CPU_KERNEL', '1') == '0':
        _error = 'disabled by MMOLOR_CPU_KERNEL=0'
        return None
    try:
        return importlib.import_module(f'{__package__}._olor_cpu')
    except ImportError as e:  # not built at install, or for another torch
        _error = f'{type(e).__name__}: {e}'
        warnings.warn(
            'mmolor: OLOR\'s fused CPU kernel is not available '
            f'({_error.strip()[:300]}). OLOR takes torch\'s step and then '
            'the review instead (the same update, one more pass over '
            'memory). The kernel is compiled when mmolor is installed: '
            'reinstall it with a C++ compiler and torch present, e.g. '
            '`pip install --no-build-isolation -e .` in its checkout. Set '
            'MMOLOR_CPU_KERNEL=0 to silence this.',
            stacklevel=2)
        return None


def cpu_kernel_error() -> Optional[str]:
    """Why :func:`cpu_kernel` returned None.

    Returns:
        str, optional: The reason (the import error, or that
        ``MMOLOR_CPU_KERNEL=0`` switched it off) of its latest look; None
        when the kernel loaded or :func:`cpu_kernel` has not looked yet.
    """
    return _error
