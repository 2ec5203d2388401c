# Copyright (c) mmolor contributors. All rights reserved.
from importlib import metadata

import pytest

import mmolor
from mmolor.version import REQUIREMENTS, check_versions


def test_installed_stack_is_in_range():
    check_versions()  # what `import mmolor` runs
    assert mmolor.__version__ == metadata.version('mmolor')


def test_out_of_range_names_the_package_and_the_fix():
    installed = metadata.version('mmengine')
    with pytest.raises(ImportError) as info:
        check_versions({'mmengine': ('0.11.0', '0.12.0'),
                        'torch': REQUIREMENTS['torch']})
    text = str(info.value)
    assert f'mmengine {installed} is installed, mmolor needs ' \
        'mmengine>=0.11.0,<0.12.0' in text
    assert 'torch' not in text.split('Fix:')[0]  # torch is fine
    assert 'make install' in text


def test_missing_package_is_named():
    with pytest.raises(ImportError,
                       match=r'no-such-dist is not installed \(need '
                       r'no-such-dist>=1\.0\)'):
        check_versions({'no-such-dist': ('1.0', None)})
