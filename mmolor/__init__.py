# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor: OLOR (One Step Learning, One Step Review) for OpenMMLab.

Importing mmolor checks the stack's versions and registers OLORAdamW,
OLORAdam, OLORSGD and OLOROptimWrapperConstructor in mmengine's root
registries, so configs find them under any default scope.
"""
from .version import __version__, check_versions

check_versions()

from .optim import *  # noqa: F401,F403,E402

__all__ = ['__version__']
