# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor: OLOR (One Step Learning, One Step Review) for OpenMMLab.

Importing mmolor checks the stack's versions, registers OLORAdamW, OLORAdam,
OLORSGD, OLOROptimWrapperConstructor and OLORDriftHook in mmengine's root
registries (so configs find them under any default scope) and makes
mmengine checkpoints load on torch >= 2.6 (``--resume``, ``load_from``).
"""
from .version import __version__, check_versions

check_versions()

from . import utils  # noqa: F401,E402
from .optim import *  # noqa: F401,F403,E402
from . import engine  # noqa: F401,E402

__all__ = ['__version__']
