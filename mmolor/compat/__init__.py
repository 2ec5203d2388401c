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
``tools/train.py``, ``tools/test.py``)  DDP wrapper need CUDA: gloo on CPU;
                                       the gloo group it creates is destroyed
                                       at exit (else an occasional SIGABRT
                                       in interpreter finalisation)
=====================================  ========================================

:func:`apply` makes the first four changes (``prepare_dist`` changes a
config, and only the tools call it). They concern mmengine's runner, and
importing it imports DeepSpeed where it is installed, so ``import mmolor``
does not: it calls :func:`with_runner`, which applies them at once if
``mmengine.runner`` is already imported (as in mmdet's and mmseg's tools,
which import it before a config's ``custom_imports`` import mmolor), or
else right after ``mmengine.runner`` is first imported (and
``mmengine._strategy``, which it imports and which imports it).
"""
import importlib
import importlib.abc
import sys
from types import ModuleType
from typing import Callable, Sequence

__all__ = ['apply', 'patch_from', 'with_runner']

_applied = False


# Each module of this package and the function that makes its change.
_PATCHES = dict(
    checkpoint='patch_checkpoint_loading', zero='patch_zero', dist='patch_fsdp')


def apply() -> None:
    """Make every change listed above; calling it again does nothing."""
    global _applied
    if _applied:
        return
    _applied = True
    for name in _PATCHES:
        patch_from(importlib.import_module(f'{__name__}.{name}'))


def patch_from(module: ModuleType) -> None:
    """Make the change of ``module`` (one of this package) if
    :func:`apply` was called. Every module calls it at its end too: a
    module imported first imports mmengine's runner, whose import calls
    :func:`apply` while the module is still half defined; its change is
    then made when the module is complete. The changes are idempotent."""
    patch = getattr(module, _PATCHES[module.__name__.rpartition('.')[2]],
                    None)
    if _applied and patch is not None:
        patch()


def with_runner(callback: Callable[[], None]) -> None:
    """Call ``callback`` now if ``mmengine.runner`` is imported, else right
    after it is."""
    if 'mmengine.runner' in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(_RUNNER_MODULES, callback))


# mmengine.runner and mmengine._strategy import each other: whichever comes
# first, the changes wait until both are complete.
_RUNNER_MODULES = ('mmengine.runner', 'mmengine._strategy')


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Run ``callback`` once, right after the outermost import of any of
    the modules ``names`` completes.

    Finds those modules with the other finders and wraps their loaders:
    each module executes as usual; when no import of theirs is still
    running (an import of one may run the import of another), the callback
    runs and this finder leaves ``sys.meta_path``.
    """

    def __init__(self, names: Sequence[str],
                 callback: Callable[[], None]) -> None:
        self.names = set(names)
        self.callback = callback
        self.loaders = {}
        self.running = 0

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names or fullname in self.loaders:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec
        self.loaders[fullname], spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loaders[spec.name].create_module(spec)

    def exec_module(self, module) -> None:
        # The module keeps its own loader (for get_source, resources...).
        loader = self.loaders[module.__name__]
        module.__loader__ = module.__spec__.loader = loader
        self.running += 1
        try:
            loader.exec_module(module)
        finally:
            self.running -= 1
        if self.running == 0 and self in sys.meta_path:
            sys.meta_path.remove(self)
            self.callback()
