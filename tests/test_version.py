# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor/version.py is the one place that names versions: ``import mmolor``
checks them, ``setup.py`` and the Makefile take theirs from it."""
import os.path as osp
import re
import runpy
import shlex
import shutil
import subprocess
from importlib import metadata

import pytest
import setuptools
from mmengine.utils import digit_version

import mmolor
from mmolor.version import (CHECKED, CODEBASE_EXTRAS, CORE, EXTRAS,
                            REQUIREMENTS, TESTED, TOOLS, check_versions,
                            install_spec, requirement)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# A comparison with a version ('<2', '>=77', '==2.1.0'), a package named
# with its version ('torch 2.14', 'mmcv-2.1.0') or a three-part version:
# none may be written anywhere but mmolor/version.py.
NAMES = sorted({*REQUIREMENTS, *TESTED, 'setuptools', 'pip', 'python'},
               key=len,
               reverse=True)
VERSION_LITERAL = re.compile(
    r'(==|>=|<=|~=|!=|<|>)\s*\d|\b\d+\.\d+\.\d+\b|\b(' +
    '|'.join(map(re.escape, NAMES)) + r')[ =<>-]{1,3}\d', re.IGNORECASE)


def test_installed_stack_is_in_range():
    check_versions()  # what `import mmolor` runs
    assert mmolor.__version__ == metadata.version('mmolor')
    # the tested versions lie in the ranges
    for dist, version in TESTED.items():
        if dist in REQUIREMENTS:
            low, high = REQUIREMENTS[dist]
            assert not low or digit_version(low) <= digit_version(version), \
                requirement(dist)
            assert not high or digit_version(version) < digit_version(high), \
                requirement(dist)


def test_out_of_range_names_the_package_and_the_fix():
    installed = metadata.version('mmengine')
    with pytest.raises(ImportError) as info:
        check_versions({
            'mmengine': ('0.11.0', '0.12.0'),
            'torch': REQUIREMENTS['torch']
        })
    text = str(info.value)
    assert f'mmengine {installed} is installed, mmolor needs ' \
        'mmengine>=0.11.0,<0.12.0' in text
    assert 'torch' not in text.split('Fix:')[0]  # torch is fine
    assert 'make install' in text


def test_out_of_range_mmcv_names_its_extra_and_its_build():
    installed = metadata.version('mmcv')
    with pytest.raises(ImportError) as info:
        check_versions({'mmcv': ('9.0.0', None)})
    text = str(info.value)
    assert f'mmcv {installed} is installed, mmolor needs mmcv>=9.0.0' in text
    assert "pip install 'mmolor[det,seg,cls]'" in text
    assert f"MMCV_WITH_OPS=1 pip install --no-build-isolation " \
        f"'{requirement('mmcv')}'" in text


def test_missing_package_is_named_if_required():
    with pytest.raises(
            ImportError,
            match=r'no-such-dist is not installed \(need '
            r'no-such-dist>=1\.0\)'):
        check_versions({'no-such-dist': ('1.0', None)},
                       required=['no-such-dist'])


def test_missing_optional_package_is_no_error():
    """A codebase that is not installed belongs to an extra: the core runs
    without it."""
    check_versions({'no-such-dist': ('1.0', None)})
    assert set(CORE) <= set(REQUIREMENTS)
    assert {'mmdet', 'mmsegmentation', 'mmpretrain', 'mmcv'} <= set(CHECKED)
    assert not set(CORE) & {d for e in CODEBASE_EXTRAS for d in EXTRAS[e]}


@pytest.fixture(scope='module')
def setup_kwargs():
    """What setup.py passes to ``setuptools.setup``."""
    captured = {}
    patch = pytest.MonkeyPatch()
    patch.setattr(setuptools, 'setup', lambda **kw: captured.update(kw))
    patch.setenv('MMOLOR_WITH_KERNEL', '0')
    patch.chdir(ROOT)
    try:
        runpy.run_path(osp.join(ROOT, 'setup.py'))
    finally:
        patch.undo()
    return captured


def test_setup_takes_the_core_and_the_extras_from_version_py(setup_kwargs):
    assert setup_kwargs['version'] == mmolor.__version__
    # the core: torch and mmengine (and numpy's range), nothing else
    assert setup_kwargs['install_requires'] == [
        'torch>=2.1.0', 'mmengine>=0.10.0,<0.11.0', 'numpy<2'
    ]
    extras = setup_kwargs['extras_require']
    assert extras['det'] == ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.3.0,<3.4.0']
    assert extras['seg'] == [
        'mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.2.0,<1.3.0', 'ftfy', 'regex'
    ]
    assert extras['cls'] == [
        'mmcv>=2.0.0,<2.2.0', 'mmpretrain>=1.2.0,<1.3.0', 'torchvision',
        'timm>=0.9'
    ]
    assert extras['all'] == list(
        dict.fromkeys(extras['det'] + extras['seg'] + extras['cls']))
    assert set(extras) == set(EXTRAS) | {'all'}
    for name, dists in EXTRAS.items():
        assert extras[name] == [requirement(d) for d in dists]


@pytest.mark.parametrize('path', ['setup.py', 'Makefile'])
def test_no_version_is_written_outside_version_py(path):
    with open(osp.join(ROOT, path)) as f:
        text = f.read()
    found = [(i, line) for i, line in enumerate(text.splitlines(), 1)
             if VERSION_LITERAL.search(line)]
    assert not found, found


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_make_install_installs_the_versions_of_version_py(tmp_path):
    """``make -n install`` (print, run nothing) into a venv that does not
    exist: every pip install names the tested versions from version.py."""
    out = subprocess.run([
        'make', '-n', '--no-print-directory', 'install',
        f'VENV={tmp_path / "venv"}', f'MMCV_WHEELS={tmp_path / "wheels"}'
    ],
                         cwd=ROOT,
                         capture_output=True,
                         text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    commands = out.stdout.replace('\\\n', ' ')
    installs = [
        shlex.split(line.split(' -m pip install ', 1)[1])
        for line in commands.splitlines() if ' -m pip install ' in line
    ]
    specs = [
        arg for args in installs for arg in args if not arg.startswith('-')
    ]
    pinned = {s.split('==')[0]: s.split('==')[1] for s in specs if '==' in s}
    assert pinned == TESTED
    ranged = {s for s in specs if re.search(r'[<>]', s)}
    assert ranged == set(TOOLS.values()) | {requirement('numpy')}
    assert "-e .[all,tests,demo]" in ' '.join(' '.join(args)
                                              for args in installs)
    # the mmcv wheel is built for, and looked up by, the tested versions
    assert f'mmcv-{TESTED["mmcv"]}-*.whl' in commands
    assert f'{TESTED["torch"]}' in commands
    for name in ('torch', 'numpy', 'pip', 'deepspeed'):
        assert install_spec(name) in specs
