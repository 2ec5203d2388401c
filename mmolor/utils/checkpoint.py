# Copyright (c) mmolor contributors. All rights reserved.
"""Load mmengine checkpoints on torch >= 2.6, where ``weights_only=True``.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, while
mmengine 0.10.7 still calls ``torch.load(filename, map_location)``. The
checkpoints it saves hold more than tensors: the message hub stores
:class:`~mmengine.logging.HistoryBuffer` objects (numpy arrays inside, and
``HistoryBuffer.min``/``max``/... pickled as ``getattr(HistoryBuffer,
'min')``) and numpy scalars, so ``--resume`` fails with ``Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer``.

:func:`patch_checkpoint_loading` fixes this without switching the safe
loader off:

1. It allow-lists, process-wide, exactly what such a checkpoint needs:
   ``HistoryBuffer``, numpy's ``ndarray``, ``dtype`` (and the numeric dtype
   classes), ``_reconstruct`` and ``scalar``, and a ``getattr`` that only
   resolves ``HistoryBuffer``'s own methods.
2. It replaces mmengine's local-file checkpoint loader with
   :func:`load_from_local`, which loads with ``weights_only=True`` and,
   only when that is refused, loads the user's own file again with
   ``weights_only=False`` and logs a warning naming the file and the reason.

Remote checkpoints (``http://``, ``open-mmlab://``, ...) keep mmengine's
loaders and torch's default, with the allow-list above. Neither torch's
default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is touched.
"""
import inspect
import io
import logging
import os.path as osp
import pickle
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import digit_version

__all__ = ['patch_checkpoint_loading', 'load_from_local']

# numpy's pickles name these by module path; numpy 2 moved `numpy.core` to
# `numpy._core`, so both spellings may appear in a checkpoint.
_NUMPY_CORE_NAMES = ('numpy.core.multiarray', 'numpy._core.multiarray')
# Numeric dtypes only: an object dtype would let a pickle build arbitrary
# Python objects inside an array.
_NUMPY_DTYPE_CODES = ('?', 'b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q',
                      'e', 'f', 'd', 'g', 'F', 'D', 'G')

_patched = False


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """A ``getattr`` that resolves only ``HistoryBuffer``'s own methods.

    ``HistoryBuffer.__getstate__`` stores its statistics functions
    (``HistoryBuffer.min``, ...), which pickle protocol 2 writes as
    ``getattr(HistoryBuffer, 'min')``. Allow-listing the real ``getattr``
    would hand any attribute of any allow-listed object to the pickle.
    """
    if obj is HistoryBuffer and not name.startswith('_') and \
            inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed: only the methods of '
        'mmengine.logging.HistoryBuffer may be looked up.')


def _safe_globals() -> Tuple[List[Any], List[Tuple[Any, str]]]:
    """The globals of an mmengine checkpoint: plain ones, and named ones.

    Named entries (``(obj, 'module.name')``) are those whose name in the
    pickle differs from the object's own ``__module__.__qualname__``.
    """
    if digit_version(np.__version__) >= digit_version('2.0.0'):
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    plain: List[Any] = [
        HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct,
        multiarray.scalar
    ]
    # `np.dtype('f8')` is an instance of a dtype class (numpy.dtypes.
    # Float64DType on numpy >= 1.25), which the unpickler must BUILD.
    plain += sorted({type(np.dtype(c)) for c in _NUMPY_DTYPE_CODES}, key=str)
    named: List[Tuple[Any, str]] = []
    named.append((_history_buffer_getattr, 'builtins.getattr'))
    for module in _NUMPY_CORE_NAMES:
        named.append((multiarray._reconstruct, f'{module}._reconstruct'))
        named.append((multiarray.scalar, f'{module}.scalar'))
    return plain, named


def _named_globals_supported(named: List[Tuple[Any, str]]) -> bool:
    """Whether this torch accepts ``(obj, name)`` entries in the allow-list.

    Older torch versions take only objects there and would fail every
    ``weights_only`` load on a tuple, so this tries a small pickle that
    needs the named ``getattr`` inside ``safe_globals``, which removes the
    entries again on exit.
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        return False
    buffer = io.BytesIO()
    torch.save({'min': HistoryBuffer.min}, buffer)
    buffer.seek(0)
    try:
        with torch.serialization.safe_globals(named):
            loaded = torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return loaded.get('min') is HistoryBuffer.min


def _unpickling_reason(error: Exception) -> str:
    """The line of torch's long weights-only message that says why."""
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith('WeightsUnpickler error:'):
            # Keep the first sentence; the rest is torch's advice.
            line = line[len('WeightsUnpickler error:'):].strip()
            return line.split('. ')[0].rstrip('.')
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_from_local(
        filename: str,
        map_location: Optional[Union[str, Callable,
                                     torch.device]] = None) -> Any:
    """Load a checkpoint from a local file, safely when possible.

    The drop-in replacement of mmengine's ``load_from_local``: it first
    loads with ``weights_only=True`` (with the allow-list of
    :func:`patch_checkpoint_loading`). If torch refuses an object in the
    file, the file is loaded again with ``weights_only=False`` and a
    warning names the file and the refused object. This only happens for
    local files, i.e. the checkpoint a user passes with ``--resume``,
    ``load_from`` or a ``Pretrained`` init_cfg; a file downloaded from a URL
    never gets the full load.

    Args:
        filename (str): Local checkpoint path; ``~`` is expanded.
        map_location (str | Callable | torch.device, optional): Same as
            :func:`torch.load`. Defaults to None.

    Returns:
        Any: The loaded checkpoint (usually a dict).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
    print_log(
        f'Checkpoint {filename} cannot be loaded with weights_only=True '
        f'({reason}). Loading it with weights_only=False instead, which can '
        'run arbitrary code: do this only with files you trust.',
        logger='current',
        level=logging.WARNING)
    return torch.load(filename, map_location=map_location, weights_only=False)


def patch_checkpoint_loading() -> bool:
    """Make mmengine's checkpoint loading work on torch >= 2.6.

    Allow-lists the globals of an mmengine checkpoint with
    :func:`torch.serialization.add_safe_globals` and registers
    :func:`load_from_local` as mmengine's loader for local paths
    (``CheckpointLoader.register_scheme(prefixes='', force=True)``), so
    ``Runner.resume``, ``Runner.load_checkpoint``, ``load_from`` and
    ``Pretrained`` init_cfgs work in mmengine's, mmdet's and mmseg's own
    tools once ``mmolor`` is imported (``custom_imports=dict(
    imports=['mmolor'])``). Calling it again does nothing. On torch < 2.6,
    whose ``torch.load`` still defaults to ``weights_only=False``, nothing
    is changed.

    Returns:
        bool: Whether the loading is patched (now or by an earlier call).
    """
    global _patched
    if _patched:
        return True
    if digit_version(torch.__version__) < digit_version('2.6.0'):
        return False
    plain, named = _safe_globals()
    torch.serialization.add_safe_globals(plain)
    if _named_globals_supported(named):
        torch.serialization.add_safe_globals(named)
    else:
        # Without named entries a checkpoint with a message hub cannot be
        # loaded safely; `load_from_local` then falls back with a warning.
        print_log(
            'This torch does not accept (object, name) entries in '
            'add_safe_globals; mmengine checkpoints with a message hub '
            'will be loaded with weights_only=False, with a warning.',
            logger='current',
            level=logging.DEBUG)
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    _patched = True
    return True
