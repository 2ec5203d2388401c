# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor's version and every version fact about the stack it runs on.

This module is the one place that names versions. ``setup.py`` reads it (the
requirements of the core and of each extra), the Makefile reads it (the
versions ``make install`` installs, through ``python3 mmolor/version.py
spec NAME...``), and ``import mmolor`` checks the installed packages
against it. It imports only the standard library, so that all three can
read it before anything else is installed.

What needs what:

- the core (:mod:`mmolor.optim`: the optimizers and the constructor;
  :mod:`mmolor.engine`: the drift hook; :mod:`mmolor.compat`) needs torch
  and mmengine only;
- the extras add what OpenMMLab's codebases need, for their configs, their
  backbones and the tools: ``det`` (mmdet), ``seg`` (mmsegmentation),
  ``cls`` (mmpretrain, timm), ``all`` (the three).
"""
import sys
from importlib import metadata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__version__ = '0.1.0'
# The Python versions mmolor installs on.
PYTHON_REQUIRES = '>=3.8'

# distribution -> (minimum, exclusive maximum); None: no bound. The ranges
# tested together.
REQUIREMENTS: Dict[str, Tuple[Optional[str], Optional[str]]] = {
    'torch': ('2.1.0', None),
    'mmengine': ('0.10.0', '0.11.0'),
    # The stack is tested on numpy 1 only.
    'numpy': (None, '2'),
    'mmcv': ('2.0.0', '2.2.0'),  # with its ops, built from source
    'mmdet': ('3.3.0', '3.4.0'),
    'mmsegmentation': ('1.2.0', '1.3.0'),
    'ftfy': (None, None),  # imported by mmseg, not declared by it
    'regex': (None, None),  # likewise
    'mmpretrain': ('1.2.0', '1.3.0'),
    'torchvision': (None, None),  # imported by mmpretrain and timm
    'timm': ('0.9', None),
    # the `tests` and `demo` extras
    'pytest': ('7.3', None),
    'pytest-xdist': ('3.2', None),  # the fast lane's workers (worksteal)
    'expecttest': (None, None),  # torch's own optimizer test table
    'scikit-learn': (None, None),  # the demo's bundled digits
    'matplotlib': (None, None),  # the demo's plots
}

# What every install gets: the optimizers, the constructor, the drift hook
# and mmolor.compat import nothing else.
CORE: Tuple[str, ...] = ('torch', 'mmengine', 'numpy')

# `pip install 'mmolor[det]'` and so on. mmcv (with its ops) is what mmdet,
# mmseg and mmpretrain build their models with.
EXTRAS: Dict[str, Tuple[str, ...]] = {
    'det': ('mmcv', 'mmdet'),
    'seg': ('mmcv', 'mmsegmentation', 'ftfy', 'regex'),
    'cls': ('mmcv', 'mmpretrain', 'torchvision', 'timm'),
    'tests': ('pytest', 'pytest-xdist', 'expecttest'),
    'demo': ('scikit-learn', 'matplotlib'),
}
# The extras that `all` gathers: every codebase.
CODEBASE_EXTRAS: Tuple[str, ...] = ('det', 'seg', 'cls')
# A config's `default_scope` (and an `mmdet::` base, a `mmdet.X` type)
# names the codebase's import name; this is the extra that installs it.
SCOPE_EXTRAS: Dict[str, str] = {
    'mmdet': 'det',
    'mmseg': 'seg',
    'mmpretrain': 'cls'
}
# The distributions `import mmolor` checks, where they are installed: the
# core must be, the others may be missing (their extra is then missing).
CHECKED: Tuple[str, ...] = ('torch', 'mmengine', 'mmcv', 'mmdet',
                            'mmsegmentation', 'mmpretrain')

# The versions `make install` installs: the stack the suite runs on.
# torch 2.14.1 + torchvision 0.29.1 is the pair that imports mmpretrain and
# timm (torchvision has no build for the CPU-only torch wheels); mmcv 2.1.0
# is the newest that mmdet 3.3 takes; deepspeed 0.16.9 (for mmengine's
# DeepSpeedStrategy) is the last release that has
# `deepspeed.runtime.fp16.onebit`, which mmengine 0.10.7 imports.
TESTED: Dict[str, str] = {
    'torch': '2.14.1',
    'torchvision': '0.29.1',
    'mmengine': '0.10.7',
    'mmcv': '2.1.0',
    'mmdet': '3.3.0',
    'mmsegmentation': '1.2.2',
    'mmpretrain': '1.2.0',
    'timm': '1.0.31',
    'deepspeed': '0.16.9',
}

# The build tools `make install` runs with, as pip specifiers.
TOOLS: Dict[str, str] = {
    'pip': 'pip<26',
    # mmcv's setup.py imports pkg_resources, which setuptools 70 dropped:
    # mmcv is built with an older one.
    'setuptools-for-mmcv': 'setuptools<70',
    # torch asks for >=77; mmengine still imports pkg_resources (e.g. to
    # resolve `_base_ = 'mmdet::...'`), which setuptools 81 drops.
    'setuptools': 'setuptools>=77,<81',
}


def requirement(dist: str) -> str:
    """The pip requirement of ``dist``: ``'mmdet>=3.3.0,<3.4.0'``."""
    low, high = REQUIREMENTS[dist]
    bounds = ([f'>={low}'] if low else []) + ([f'<{high}'] if high else [])
    return dist + ','.join(bounds)


def install_spec(name: str) -> str:
    """What ``make install`` asks pip for: a build tool's specifier, else
    the tested version (``torch==2.14.1``), else the range."""
    if name in TOOLS:
        return TOOLS[name]
    if name in TESTED:
        return f'{name}=={TESTED[name]}'
    return requirement(name)


def install_requires() -> List[str]:
    """``setup.py``'s ``install_requires``: the core."""
    return [requirement(dist) for dist in CORE]


def extras_require() -> Dict[str, List[str]]:
    """``setup.py``'s ``extras_require``, with ``all`` = every codebase."""
    extras = {
        name: [requirement(dist) for dist in dists]
        for name, dists in EXTRAS.items()
    }
    everything = dict.fromkeys(dist for name in CODEBASE_EXTRAS
                               for dist in EXTRAS[name])
    extras['all'] = [requirement(dist) for dist in everything]
    return extras


def _installed(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _parse(version: str):
    from mmengine.utils import digit_version
    return digit_version(version.split('+')[0])


def _fix(dists: Sequence[str]) -> str:
    """How to install ``dists``, in one sentence."""
    extras = [
        name for name in CODEBASE_EXTRAS if set(EXTRAS[name]) & set(dists)
    ]
    how = 'run `make install` in the mmolor checkout, or ' \
        "`pip install 'PACKAGE SPEC'` for each line"
    if extras:
        how += f" (or `pip install 'mmolor[{','.join(extras)}]'`)"
    if 'mmcv' in dists:
        how += ('; mmcv must be built with ops: MMCV_WITH_OPS=1 pip install '
                f"--no-build-isolation '{requirement('mmcv')}'; see "
                'README.md')
    return how


def check_versions(requirements: Optional[Dict[str, Tuple]] = None,
                   required: Iterable[str] = CORE) -> None:
    """Raise ImportError naming every package out of range or missing.

    A distribution that is not installed is a problem only if it is
    ``required``: the others belong to an extra, and mmolor's core runs
    without them.

    Args:
        requirements (dict, optional): distribution -> (minimum or None,
            exclusive maximum or None). Defaults to the :data:`CHECKED`
            entries of :data:`REQUIREMENTS`.
        required (Iterable[str]): the distributions that must be installed.
            Defaults to :data:`CORE`.
    """
    if requirements is None:
        requirements = {dist: REQUIREMENTS[dist] for dist in CHECKED}
    required = set(required)
    problems: List[str] = []
    for dist, (low, high) in requirements.items():
        spec = ','.join(([f'>={low}'] if low else []) +
                        ([f'<{high}'] if high else []))
        found = _installed(dist)
        if found is None:
            if dist in required:
                problems.append(f'{dist} is not installed (need {dist}'
                                f'{spec})')
            continue
        if (low and _parse(found) < _parse(low)) or (high and _parse(found)
                                                     >= _parse(high)):
            problems.append(f'{dist} {found} is installed, mmolor needs '
                            f'{dist}{spec}')
    if problems:
        named = [line.split()[0] for line in problems]
        raise ImportError('mmolor cannot run on this environment:\n  - ' +
                          '\n  - '.join(problems) + '\nFix: ' + _fix(named) +
                          '.')


class MissingExtraError(ImportError):
    """A package that mmolor's core does not need, and that something asked
    for, is not installed; the message names the extra that installs it."""


def missing(extra: str) -> List[str]:
    """The distributions of ``extra`` that are not installed."""
    return [dist for dist in EXTRAS[extra] if _installed(dist) is None]


def require(extra: str, needed_by: str) -> None:
    """Raise :class:`MissingExtraError` (an ImportError), in one line, if
    a package of ``extra`` is not installed.

    Args:
        extra (str): a key of :data:`EXTRAS` (``'det'``, ``'seg'``, ...).
        needed_by (str): what needs it, as the message's subject
            (``"a config with default_scope='mmdet'"``).
    """
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{needed_by} needs {', '.join(absent)}, which "
            f"{'is' if len(absent) == 1 else 'are'} not installed: "
            f"pip install 'mmolor[{extra}]' (or run `make install` in the "
            'mmolor checkout)')


def require_scope(scope: str, needed_by: str) -> None:
    """:func:`require` for the codebase a registry scope or an
    ``mmdet::`` config base names; nothing for any other scope."""
    if scope in SCOPE_EXTRAS:
        require(SCOPE_EXTRAS[scope], needed_by)


def main(argv: Sequence[str]) -> int:
    """``python3 mmolor/version.py spec NAME...``: ``make install``'s pip
    specifiers, shell-quoted; ``version NAME``: a tested version."""
    import shlex
    if len(argv) >= 2 and argv[0] == 'spec':
        print(' '.join(shlex.quote(install_spec(name)) for name in argv[1:]))
        return 0
    if len(argv) == 2 and argv[0] == 'version':
        print(TESTED[argv[1]])
        return 0
    print(
        'usage: python3 mmolor/version.py spec NAME... | version NAME',
        file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
