# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor's version and the version ranges of the stack it runs on."""
from importlib import metadata
from typing import Dict, List, Optional, Tuple

__version__ = '0.1.0'

# distribution -> (minimum, exclusive maximum): the ranges tested together.
REQUIREMENTS = {
    'torch': ('2.1.0', None),
    'mmengine': ('0.10.0', '0.11.0'),
    'mmcv': ('2.0.0', '2.2.0'),
    'mmdet': ('3.3.0', '3.4.0'),
    'mmsegmentation': ('1.2.0', '1.3.0'),
    'mmpretrain': ('1.2.0', '1.3.0'),
}


def _parse(version: str):
    from mmengine.utils import digit_version
    return digit_version(version.split('+')[0])


def check_versions(requirements: Optional[Dict[str, Tuple]] = None) -> None:
    """Raise ImportError naming every package missing or out of range.

    Args:
        requirements (dict, optional): distribution -> (minimum, exclusive
            maximum or None). Defaults to :data:`REQUIREMENTS`.
    """
    problems: List[str] = []
    for dist, (low, high) in (requirements or REQUIREMENTS).items():
        spec = f'>={low}' + (f',<{high}' if high else '')
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            problems.append(f'{dist} is not installed (need {dist}{spec})')
            continue
        if _parse(found) < _parse(low) or (high and
                                           _parse(found) >= _parse(high)):
            problems.append(f'{dist} {found} is installed, mmolor needs '
                            f'{dist}{spec}')
    if problems:
        raise ImportError(
            'mmolor cannot run on this environment:\n  - ' +
            '\n  - '.join(problems) + '\nFix: run `make install` in the '
            "mmolor checkout, or `pip install 'PACKAGE SPEC'` for each line "
            '(mmcv must be built with ops: MMCV_WITH_OPS=1 pip install '
            "--no-build-isolation 'mmcv>=2.0.0,<2.2.0'; see README.md).")
