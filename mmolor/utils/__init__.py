# Copyright (c) mmolor contributors. All rights reserved.
from .setup_env import setup_scope

__all__ = ['setup_scope']
