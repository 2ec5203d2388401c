# Copyright (c) mmolor contributors. All rights reserved.
from mmengine.config import Config
from mmengine.registry import init_default_scope

__all__ = ['setup_scope']


def setup_scope(cfg: Config) -> None:
    """Make the config's ``default_scope`` the current registry scope.

    One ``tools/train.py`` / ``tools/test.py`` serves mmdet and mmseg
    configs: the config says which codebase builds it.
    """
    scope = cfg.get('default_scope', None)
    if scope is None:
        return
    init_default_scope(scope)
    if scope == 'mmdet':
        # As mmdet's tools do: limit dynamo's recompilations.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
