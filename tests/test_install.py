# Copyright (c) mmolor contributors. All rights reserved.
"""A non-editable install of mmolor works without the checkout.

pip installs a copy of the checkout into a folder of its own (without the
fused CPU kernel, ``MMOLOR_WITH_KERNEL=0``, to keep the build short). A
fresh interpreter that sees only that folder and the venv's site-packages
(``-S``: not the ``.pth`` file of the editable install, which points at the
checkout), started in another folder, imports mmolor from the install and
trains with OLOR-AdamW built from mmengine's registry.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata

import pytest

# Builds and installs mmolor with pip.
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Two steps of OLOR-AdamW built from mmengine's registry (rollback 0.1,
# constant lr, so kappa = 0.1) and of torch's AdamW followed by the review
# p <- p - kappa * (p - anchor): ``model`` and ``reference`` end equal
# (test_extras.py runs it too).
TWO_STEPS = r'''
import copy

import torch
from mmengine.registry import OPTIMIZERS

torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
x, y = torch.randn(8, 4), torch.randn(8, 3)
anchor = [p.detach().clone() for p in model.parameters()]
reference = copy.deepcopy(model)
olor = OPTIMIZERS.build(dict(type='OLORAdamW', params=model.parameters(),
                             lr=0.1, rollback=0.1))
adamw = torch.optim.AdamW(reference.parameters(), lr=0.1)
for _ in range(2):
    for net, optimizer in ((model, olor), (reference, adamw)):
        optimizer.zero_grad()
        (net(x) - y).pow(2).sum().backward()
        optimizer.step()
    with torch.no_grad():
        for p, p0 in zip(reference.parameters(), anchor):
            p.sub_(0.1 * (p - p0))
'''
CHECK = r'''
import importlib.util
import json

import mmolor
''' + TWO_STEPS + r'''
print(json.dumps(dict(
    mmolor=mmolor.__file__,
    optimizer=type(olor).__name__,
    benchmarks=importlib.util.find_spec('benchmarks') is not None,
    olor=[p.flatten().tolist() for p in model.parameters()],
    expected=[p.flatten().tolist() for p in reference.parameters()],
    drift=[(p - p0).abs().min().item()
           for p, p0 in zip(reference.parameters(), anchor)])))
'''


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """The folder that ``pip install --target`` filled from the checkout."""
    tmp = tmp_path_factory.mktemp('install')
    # A copy, so that the build leaves the checkout (and its build/) alone.
    source = tmp / 'source'
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns('.git', '.venv', 'build', 'work_dirs',
                                      '*.egg-info', '__pycache__', '*.so'))
    target = tmp / 'target'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
         '--no-build-isolation', '--target', str(target), str(source)],
        env=dict(os.environ, MMOLOR_WITH_KERNEL='0'),
        check=True,
        timeout=600)
    return target


def test_only_mmolor_is_installed(installed):
    top = {p.name for p in installed.iterdir()}
    assert 'mmolor' in top
    assert not {'benchmarks', 'tests', 'tools', 'configs'} & top, top
    assert (installed / 'mmolor' / 'optim' / '__init__.py').is_file()
    for demo_code in ('analysis', 'datasets'):
        assert not (installed / 'mmolor' / demo_code).exists()


def test_installed_metadata_requires_the_core_and_offers_the_extras(installed):
    """The wheel's requirements are version.py's: torch and mmengine for
    every install, the codebases only through the extras."""
    from packaging.requirements import Requirement

    from mmolor.version import extras_require, install_requires

    def parsed(requirements):
        return [(r.name, r.specifier) for r in map(Requirement, requirements)]

    dist, = metadata.distributions(path=[str(installed)])
    assert dist.metadata['Name'] == 'mmolor'
    requires = [Requirement(r) for r in dist.requires]
    core = [(r.name, r.specifier) for r in requires if r.marker is None]
    assert core == parsed(install_requires())
    assert {name for name, _ in core} == {'torch', 'mmengine', 'numpy'}
    offered = set(dist.metadata.get_all('Provides-Extra'))
    assert offered == set(extras_require())
    for extra, wanted in extras_require().items():
        got = [
            (r.name, r.specifier) for r in requires
            if r.marker is not None and r.marker.evaluate(dict(extra=extra))
        ]
        assert got == parsed(wanted), extra


def test_installed_mmolor_trains_without_the_checkout(installed, tmp_path):
    paths = sysconfig.get_paths()
    site = dict.fromkeys([paths['purelib'], paths['platlib']])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed), *site]))
    out = subprocess.run([sys.executable, '-S', '-c', CHECK],
                         cwd=tmp_path,
                         env=env,
                         capture_output=True,
                         text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert osp.commonpath([result['mmolor'], str(installed)]) == str(installed)
    assert result['optimizer'] == 'OLORAdamW'
    assert not result['benchmarks']
    # Every weight moved, so the review (kappa * drift) changed every weight
    # by far more than the tolerance.
    assert min(result['drift']) > 1e-2
    for got, want in zip(result['olor'], result['expected']):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
