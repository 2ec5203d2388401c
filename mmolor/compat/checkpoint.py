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
   resolves ``HistoryBuffer``'s own methods. Everything else an OpenMMLab
   checkpoint holds (the config text, class-name tuples, palettes, version
   strings, ``OrderedDict`` state dicts with ``_metadata``, the ``Counter``
   of a ``MultiStepLR``) torch already accepts.
2. It replaces mmengine's local-file checkpoint loader with
   :func:`load_from_local`, which loads with ``weights_only=True``. A file
   torch refuses is NOT loaded: :class:`UntrustedCheckpointError` names the
   file, the global torch refused and the ways to trust it. Only files the
   user names in ``MMOLOR_TRUSTED_CHECKPOINTS`` (``--trust-checkpoint PATH``
   of ``tools/train.py`` / ``tools/test.py`` appends there), or every file
   with torch's own ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, are loaded with
   ``weights_only=False``.

Remote checkpoints (``http://``, ``open-mmlab://``, ...) keep mmengine's
loaders and torch's default, with the allow-list above: torch refuses what
it does not accept, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.
Neither torch's default nor that variable is touched.
"""
import inspect
import io
import logging
import os
import os.path as osp
import pickle
import re
import shlex
import sys
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import digit_version

from . import patch_from

__all__ = [
    'patch_checkpoint_loading', 'load_from_local', 'trust_checkpoints',
    'trusted_checkpoints', 'UntrustedCheckpointError', 'TRUST_ENV'
]

# The files a user trusts to be loaded with weights_only=False, separated
# by os.pathsep. Read at each load, so that dist workers and code that sets
# it after `import mmolor` see it too.
TRUST_ENV = 'MMOLOR_TRUSTED_CHECKPOINTS'
# torch's own switch, honoured by torch only when the caller leaves
# `weights_only` unset; `load_from_local` passes it, so it checks it here.
_TORCH_FULL_LOAD_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
_TRUE_VALUES = ('1', 'y', 'yes', 'true')

# numpy's pickles name these by module path; numpy 2 moved `numpy.core` to
# `numpy._core`, so both spellings may appear in a checkpoint.
_NUMPY_CORE_NAMES = ('numpy.core.multiarray', 'numpy._core.multiarray')
# Numeric dtypes only: an object dtype would let a pickle build arbitrary
# Python objects inside an array.
_NUMPY_DTYPE_CODES = ('?', 'b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q',
                      'e', 'f', 'd', 'g', 'F', 'D', 'G')

_patched = False


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint that ``weights_only=True`` refuses, and nobody trusts.

    Nothing in the file has run: torch's restricted unpickler read it and
    stopped at the first object it may not create. The message names the
    file, what torch refused and the ways to trust the file.

    Attributes:
        filename (str): The checkpoint.
        refused (str | None): The global torch refused, e.g.
            ``'builtins.exec'``; None when torch's refusal names none.
        reason (str): torch's reason, first sentence.
    """

    def __init__(self,
                 filename: str,
                 refused: Optional[str],
                 reason: str = '') -> None:
        self.filename = filename
        self.refused = refused
        self.reason = reason
        if refused is not None:
            what = (f'the global {refused}, which neither torch nor mmolor '
                    'allow-lists')
        else:
            what = f'the file ({reason})'
        quoted = shlex.quote(filename)
        super().__init__(
            f'Checkpoint {filename} was not loaded: with weights_only=True '
            f'torch refuses {what}. Loading it fully would let the file run '
            'code; nothing in it has run. Load it only if you trust its '
            'source, with one of:\n'
            f'  --trust-checkpoint {quoted}   (tools/train.py and '
            'tools/test.py; repeat it for more files)\n'
            f'  {TRUST_ENV}={quoted}   (files separated by '
            f'{os.pathsep!r}; any tool that imports mmolor)\n'
            f'  {_TORCH_FULL_LOAD_ENV}=1   (torch\'s own switch: every '
            'checkpoint is loaded fully)')

    def __reduce__(self) -> Tuple[type, Tuple[str, Optional[str], str]]:
        # Keep the arguments when the error crosses processes.
        return type(self), (self.filename, self.refused, self.reason)


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


def _refused_global(error: Exception) -> Tuple[Optional[str], str]:
    """The global torch's weights-only unpickler refused, and its reason.

    torch writes ``GLOBAL builtins.exec`` as ``GLOBAL exec``; the builtins
    prefix is put back. A refusal that names no global (a ``getattr`` this
    module does not resolve, an object it may not build) gives None.
    """
    # torch wraps the unpickler's own message in advice (to pass
    # `weights_only=False`) and a link to its docs; keep the message.
    message = str(error).split('\n\nCheck the documentation')[0]
    if 'WeightsUnpickler error:' in message:
        reason = message.split('WeightsUnpickler error:', 1)[1]
    elif '\n\n' in message:
        reason = message.rsplit('\n\n', 1)[1]
    else:
        reason = message.replace('Weights only load failed.', '', 1)
    reason = ' '.join(reason.split()).split('. ')[0].rstrip('.')
    reason = reason or type(error).__name__
    match = re.search(r'GLOBAL (\S+)', message)
    if match is None:
        return None, reason
    name = match.group(1)
    return (name if '.' in name else f'builtins.{name}'), reason


def trusted_checkpoints() -> List[str]:
    """The real paths of the files named in ``MMOLOR_TRUSTED_CHECKPOINTS``."""
    value = os.environ.get(TRUST_ENV, '')
    return [
        osp.realpath(osp.expanduser(path)) for path in value.split(os.pathsep)
        if path
    ]


def trust_checkpoints(paths: Optional[Iterable[str]]) -> None:
    """Add files to ``MMOLOR_TRUSTED_CHECKPOINTS`` for this process.

    What ``--trust-checkpoint PATH`` of ``tools/train.py`` and
    ``tools/test.py`` calls before the runner is built; child processes
    (dataloader workers, ``torchrun`` ranks started from here) inherit the
    variable. Paths are made absolute, so a later ``chdir`` does not change
    which file is trusted.

    Args:
        paths (Iterable[str], optional): Checkpoint files; None or empty
            changes nothing.
    """
    added = [osp.abspath(osp.expanduser(path)) for path in paths or ()]
    if not added:
        return
    current = [p for p in os.environ.get(TRUST_ENV, '').split(os.pathsep) if p]
    os.environ[TRUST_ENV] = os.pathsep.join(current + added)


def load_from_local(
        filename: str,
        map_location: Optional[Union[str, Callable,
                                     torch.device]] = None) -> Any:
    """Load a checkpoint from a local file with ``weights_only=True``.

    The drop-in replacement of mmengine's ``load_from_local``, which every
    ``load_from``, ``--resume`` and ``Pretrained`` init_cfg with a local
    path goes through. It loads with ``weights_only=True`` (with the
    allow-list of :func:`patch_checkpoint_loading`); a file torch refuses
    raises :class:`UntrustedCheckpointError` and nothing in it runs. Only a
    file the user trusts is loaded with ``weights_only=False``: one named in
    ``MMOLOR_TRUSTED_CHECKPOINTS`` (compared by real path), or any file
    when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (torch then loads it
    fully and warns, as it does for a plain ``torch.load``).

    Args:
        filename (str): Local checkpoint path; ``~`` is expanded.
        map_location (str | Callable | torch.device, optional): Same as
            :func:`torch.load`. Defaults to None.

    Returns:
        Any: The loaded checkpoint (usually a dict).

    Raises:
        FileNotFoundError: There is no such file.
        UntrustedCheckpointError: torch refuses the file with
            ``weights_only=True`` and the user has not trusted it.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if os.environ.get(_TORCH_FULL_LOAD_ENV, '0').lower() in _TRUE_VALUES:
        # Leave `weights_only` unset: torch's switch applies and torch warns.
        return torch.load(filename, map_location=map_location)
    if osp.realpath(filename) in trusted_checkpoints():
        print_log(
            f'Loading checkpoint {filename} with weights_only=False: it is '
            f'trusted in {TRUST_ENV}.',
            logger='current',
            level=logging.INFO)
        return torch.load(
            filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # `from None`: torch's message advises `weights_only=False`, which
        # is not how a user of mmengine's tools trusts a file.
        raise UntrustedCheckpointError(filename,
                                       *_refused_global(error)) from None


def patch_checkpoint_loading() -> bool:
    """Make mmengine's checkpoint loading work on torch >= 2.6.

    Allow-lists the globals of an mmengine checkpoint with
    :func:`torch.serialization.add_safe_globals` and registers
    :func:`load_from_local` as mmengine's loader for local paths
    (``CheckpointLoader.register_scheme(prefixes='', force=True)``), so
    ``Runner.resume``, ``Runner.load_checkpoint``, ``load_from`` and
    ``Pretrained`` init_cfgs work in mmengine's, mmdet's and mmseg's own
    tools once ``mmolor`` is imported (``custom_imports=dict(
    imports=['mmolor'])``), and refuse files that need anything else unless
    the user trusts them. Calling it again does nothing. On torch < 2.6,
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
        # loaded safely; `load_from_local` then refuses it until trusted.
        print_log(
            'This torch does not accept (object, name) entries in '
            'add_safe_globals; mmengine checkpoints with a message hub '
            f'need --trust-checkpoint or {TRUST_ENV} to load.',
            logger='current',
            level=logging.WARNING)
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    _patched = True
    return True


patch_from(sys.modules[__name__])
