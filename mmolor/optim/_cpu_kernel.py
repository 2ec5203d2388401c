# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's fused CPU kernel (``csrc/olor_cpu.cpp``), built on first use.

The kernel takes the AdamW / Adam / SGD step and the review in one pass
over memory. It is compiled with torch's C++ extension builder the first
time a fused CPU step needs it (about a minute; the build is cached under
``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``, and
shared by processes). Where it cannot be built (no C++ compiler, no ninja)
or ``MMOLOR_CPU_KERNEL=0`` is set, OLOR takes torch's fused step followed
by the review instead: the same update, one more pass over memory.
"""
import os
import os.path as osp
import shutil
import sys
import time
import warnings
from types import ModuleType
from typing import Optional

from mmengine.logging import print_log

__all__ = ['cpu_kernel', 'cpu_kernel_error']

_SOURCE = osp.join(osp.dirname(__file__), 'csrc', 'olor_cpu.cpp')
_module: Optional[ModuleType] = None
_error: Optional[str] = None


def cpu_kernel() -> Optional[ModuleType]:
    """The compiled kernel module, or None when it is unavailable.

    Builds it on the first call (once per process; later processes load
    the cached build). A failed build warns once and is not retried.
    """
    global _module, _error
    if _module is not None or _error is not None:
        return _module
    if os.environ.get('MMOLOR_CPU_KERNEL', '1') == '0':
        _error = 'disabled by MMOLOR_CPU_KERNEL=0'
        return None
    print_log(
        'mmolor: loading its fused CPU kernel (compiled on first use, about '
        'a minute; `make install` compiles it ahead)',
        logger='current')
    start = time.time()
    path = os.environ.get('PATH', '')
    # pip's ninja sits beside the interpreter, which a venv's python run by
    # its full path does not put on PATH.
    if shutil.which('ninja') is None:
        os.environ['PATH'] = osp.dirname(sys.executable) + os.pathsep + path
    try:
        from torch.utils.cpp_extension import load
        _module = load(
            name='mmolor_olor_cpu',
            sources=[_SOURCE],
            extra_cflags=['-O3', '-fno-math-errno'],
            verbose=False)
    except Exception as e:  # no compiler, no ninja, unsupported platform
        _error = f'{type(e).__name__}: {e}'
        warnings.warn(
            'mmolor could not build its fused CPU kernel '
            f'({_error.strip()[:500]}); OLOR takes torch\'s fused step and '
            'then the review instead (the same update, one more pass over '
            'memory). Set MMOLOR_CPU_KERNEL=0 to skip the build.')
        return None
    finally:
        os.environ['PATH'] = path
    elapsed = time.time() - start
    if elapsed > 5:  # a build, not a load of the cached one
        print_log(
            f'mmolor: built the fused CPU kernel in {elapsed:.0f}s '
            '(cached for later runs)',
            logger='current')
    return _module


def cpu_kernel_error() -> Optional[str]:
    """Why :func:`cpu_kernel` returned None (None when it did not)."""
    return _error
