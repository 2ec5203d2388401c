# Copyright (c) mmolor contributors. All rights reserved.
"""Every change mmolor makes to the behaviour of mmengine and torch.

Each is a fix that OLOR runs need on the stack mmolor targets (mmengine
0.10.7, torch >= 2.6 unless said otherwise); each lives in one module here:

=====================================  ========================================
change                                 reason
=====================================  ========================================
``checkpoint.patch_checkpoint_loading``  mmengine 0.10.7 calls ``torch.load``
(torch's safe-globals allow-list;      without ``weights_only``; torch >= 2.6
mmengine's local ``CheckpointLoader``  refuses mmengine's own checkpoints
scheme)                                (``--resume``, ``load_from``); files
                                       torch refuses are never unpickled
``zero.patch_zero`` (``OPTIMIZERS``    mmengine 0.10.7 looks ZeRO's
``ZeroRedundancyOptimizer``)           ``optimizer_type`` up in torch.optim
                                       only: ``'OLORAdamW'`` fails
``zero.patch_zero``                    mmengine 0.10.7 saves on rank 0 only,
(``Runner.save_checkpoint``,           but ZeRO's gather needs every rank:
``DDPStrategy.save_checkpoint``)       the first checkpoint hangs
``dist.patch_fsdp`` (``STRATEGIES``    mmengine 0.10.7's FSDP strategy cannot
``FSDPStrategy``)                      resume on torch >= 2.1 nor run on CPU
``dist.prepare_dist`` (called by       mmengine 0.10.7's ``init_dist`` and
``tools/train.py``, ``tools/test.py``)  DDP wrapper need CUDA: gloo on CPU
=====================================  ========================================

:func:`apply` makes the first four changes (``prepare_dist`` changes a
config, and only the tools call it). They concern mmengine's runner, and
importing it imports DeepSpeed where it is installed, so ``import mmolor``
does not: it calls :func:`with_runner`, which applies them at once if
``mmengine.runner`` is already imported (as in mmdet's and mmseg's tools,
which import it before a config's ``custom_imports`` import mmolor), or
else right after ``mmengine.runner`` is first imported.
"""
import importlib.abc
import importlib.util
import sys
from typing import Callable

__all__ = ['apply', 'with_runner']

_applied = False


def apply() -> None:
    """Make every change listed above; calling it again does nothing."""
    global _applied
    if _applied:
        return
    _applied = True
    from .checkpoint import patch_checkpoint_loading
    from .dist import patch_fsdp
    from .zero import patch_zero
    patch_checkpoint_loading()
    patch_zero()
    patch_fsdp()


def with_runner(callback: Callable[[], None]) -> None:
    """Call ``callback`` now if ``mmengine.runner`` is imported, else right
    after it is."""
    if 'mmengine.runner' in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport('mmengine.runner', callback))


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Run ``callback`` once, right after the module ``name`` is imported.

    Finds the module with the other finders and wraps its loader: the
    module executes as usual, then ``callback`` runs.
    """

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name = name
        self.callback = callback
        self.loader = None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; find it without us
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader (for get_source, resources...).
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.callback()
