# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor: OLOR (One Step Learning, One Step Review) for OpenMMLab.

Importing mmolor checks the versions of the stack that is installed (torch
and mmengine must be; mmcv, mmdet, mmsegmentation and mmpretrain are
checked where they are installed, see :mod:`mmolor.version`) and registers
OLORAdamW, OLORAdam, OLORSGD and OLOROptimWrapperConstructor in mmengine's
root registries (so configs find them under any default scope). What concerns
mmengine's runner, OLORDriftHook and the fixes of :mod:`mmolor.compat`
(listed there), is registered and applied once ``mmengine.runner`` is
imported: importing mmolor does not import it (it imports DeepSpeed where
that is installed), nor anything else beyond ``mmengine.optim``.
"""
from .version import __version__, check_versions

check_versions()

from . import compat  # noqa: E402
from .optim import *  # noqa: F401,F403,E402


def _with_runner() -> None:
    compat.apply()
    from . import engine  # noqa: F401  registers OLORDriftHook


compat.with_runner(_with_runner)

__all__ = ['__version__']
