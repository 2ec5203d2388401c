# Copyright (c) mmolor contributors. All rights reserved.
from .setup_env import codebases, load_config, require_codebases, setup_scope

__all__ = ['codebases', 'load_config', 'require_codebases', 'setup_scope']
