# Copyright (c) mmolor contributors. All rights reserved.
import re
from typing import Any, List

from mmengine.config import Config
from mmengine.registry import init_default_scope

from ..version import EXTRAS, SCOPE_EXTRAS, missing, require, require_scope

__all__ = ['codebases', 'load_config', 'require_codebases', 'setup_scope']


def load_config(path: str) -> Config:
    """``Config.fromfile(path)`` (``get_config`` for ``'mmdet::...'``),
    except that a config whose bases live in a codebase that is not
    installed raises ImportError naming mmolor's extra that installs it, in
    one line."""
    try:
        if '::' in path:
            from mmengine.hub import get_config
            return get_config(path)
        return Config.fromfile(path)
    except Exception as error:
        text = str(error)
        for scope, extra in SCOPE_EXTRAS.items():
            names = (scope, ) + EXTRAS[extra]
            if missing(extra) and any(
                    re.search(rf'\b{re.escape(name)}\b', text)
                    for name in names):
                try:
                    require(extra, path)
                except ImportError as one_line:
                    raise one_line from error
        raise


def _type_scopes(node: Any, found: List[str]) -> None:
    if isinstance(node, dict):
        kind = node.get('type')
        if isinstance(kind, str) and '.' in kind:
            found.append(kind.split('.')[0])
        for value in node.values():
            _type_scopes(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _type_scopes(value, found)


def codebases(cfg: Config) -> List[str]:
    """The OpenMMLab codebases a config builds from: its ``default_scope``
    and the scopes of its scoped types (``type='mmpretrain.ConvNeXt'``),
    first seen first."""
    found = [cfg.get('default_scope', None)]
    _type_scopes(cfg.to_dict() if isinstance(cfg, Config) else cfg, found)
    return [s for s in dict.fromkeys(found) if s in SCOPE_EXTRAS]


def require_codebases(cfg: Config) -> None:
    """Raise :class:`~mmolor.version.MissingExtraError`, in one line, if a
    codebase the config builds from (:func:`codebases`) is not installed;
    it names mmolor's extra that installs it."""
    what = getattr(cfg, 'filename', None) or 'this config'
    for codebase in codebases(cfg):
        require_scope(codebase, f'{what} (it builds {codebase} modules)')


def setup_scope(cfg: Config) -> None:
    """Make the config's ``default_scope`` the current registry scope.

    One ``tools/train.py`` / ``tools/test.py`` serves mmdet and mmseg
    configs: the config says which codebase builds it. A codebase that the
    config builds from and that is not installed is an error naming the
    extra to install (:func:`require_codebases`).
    """
    require_codebases(cfg)
    scope = cfg.get('default_scope', None)
    if scope is None:
        return
    init_default_scope(scope)
    if scope == 'mmdet':
        # As mmdet's tools do: limit dynamo's recompilations.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
