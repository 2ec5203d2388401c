# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor's core runs with any subset of the OpenMMLab codebases.

Each check runs in a fresh interpreter whose site-packages is a folder of
links to the venv's, less the files of the packages hidden (their code and
their ``.dist-info``): they are gone for the import system, for
``importlib.metadata`` and for ``pkg_resources`` alike, as if never
installed. ``-S`` keeps the venv's own site-packages (and its ``.pth``
files, the editable install's among them) off the path; the checkout comes
first on it.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from typing import Dict, Iterable, List

import pytest
from mmengine.config import Config

from mmolor.utils import codebases, setup_scope
from mmolor.version import (EXTRAS, MissingExtraError, missing, require,
                            require_scope)
from test_install import TWO_STEPS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# distribution -> the module it installs
MODULES = {
    'mmdet': 'mmdet',
    'mmsegmentation': 'mmseg',
    'mmpretrain': 'mmpretrain',
    'mmcv': 'mmcv',
    'timm': 'timm',
    'torchvision': 'torchvision',
    'ftfy': 'ftfy',
    'regex': 'regex',
    'deepspeed': 'deepspeed',
}
# Everything but torch and mmengine (and what they need).
ONLY_CORE = [
    'mmdet', 'mmsegmentation', 'mmpretrain', 'timm', 'torchvision', 'ftfy',
    'regex', 'deepspeed'
]

# In the fresh interpreter: the hidden packages are gone; `import mmolor`
# and `from mmolor.optim import OLORAdamW` work; two steps of OLOR-AdamW
# equal torch's AdamW followed by the review (test_install.TWO_STEPS); the
# constructor builds its groups by depth on a torch backbone; mmengine's
# runner gets OLORDriftHook.
CORE = textwrap.dedent(r'''
    import importlib.util
    import json
    import sys
    from importlib import metadata

    hidden = json.loads(sys.argv[1])
    for dist, module in hidden.items():
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
        else:
            raise SystemExit(f'{dist} is still installed')
        assert importlib.util.find_spec(module) is None, module

    from torch import nn

    import mmolor
    from mmolor.optim import OLORAdamW
    ''') + TWO_STEPS + textwrap.dedent(r'''
    assert type(olor) is OLORAdamW

    from mmengine.optim import build_optim_wrapper

    class Toy(nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
            self.head = nn.Linear(4, 1)

    toy = Toy()
    wrapper = build_optim_wrapper(toy, dict(
        constructor='OLOROptimWrapperConstructor',
        optimizer=dict(type='OLORAdamW', lr=0.1),
        paramwise_cfg=dict(rollback=dict(max=0.5, min=0.0, power=1.0))))
    names = {id(p): n for n, p in toy.named_parameters()}
    rollback = {names[id(p)]: g['rollback']
                for g in wrapper.optimizer.param_groups for p in g['params']}

    import mmengine.runner  # noqa: F401  registers mmolor's runner side
    from mmengine.registry import HOOKS

    print(json.dumps(dict(
        mmolor=mmolor.__file__,
        olor=[p.flatten().tolist() for p in model.parameters()],
        expected=[p.flatten().tolist() for p in reference.parameters()],
        rollback=rollback,
        hook=HOOKS.get('OLORDriftHook') is not None,
        loaded=sorted(m for m in hidden.values() if m in sys.modules))))
''')


def _top_level(dist: str) -> set:
    return {
        f.parts[0]
        for f in metadata.distribution(dist).files or () if f.parts[0] != '..'
    }


@pytest.fixture(scope='module')
def shared_top_level() -> Dict[str, int]:
    """How many distributions install each top-level entry."""
    count: Dict[str, int] = {}
    for dist in metadata.distributions():
        for entry in {f.parts[0] for f in dist.files or ()}:
            count[entry] = count.get(entry, 0) + 1
    return count


@pytest.fixture
def without(tmp_path, shared_top_level):
    """``without(dists)``: run Python code (or a script) in a fresh
    interpreter that sees the venv's site-packages less ``dists``."""

    def make(dists: Iterable[str]):
        dists = list(dists)
        hidden = set()
        for dist in dists:
            # the code and the metadata; not a folder that other
            # distributions install into as well
            hidden |= {
                e
                for e in _top_level(dist) if shared_top_level.get(e, 0) == 1
            }
        site = tmp_path / 'site'
        site.mkdir()
        paths = sysconfig.get_paths()
        for folder in dict.fromkeys([paths['purelib'], paths['platlib']]):
            for entry in os.listdir(folder):
                if entry in hidden or entry.endswith('.pth') or \
                        (site / entry).exists():
                    continue
                os.symlink(osp.join(folder, entry), site / entry)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(site)]))
        env.pop('PYTHONSTARTUP', None)

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, '-S', *args],
                                  cwd=ROOT,
                                  env=env,
                                  capture_output=True,
                                  text=True,
                                  timeout=600)

        return run

    return make


def check_core(run, hidden: List[str]) -> dict:
    out = run('-c', CORE, json.dumps({d: MODULES[d] for d in hidden}))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert osp.commonpath([result['mmolor'], ROOT]) == ROOT
    for got, want in zip(result['olor'], result['expected']):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # conv 0 (+ its norm) at depth 0, conv 3 (+ norm) at 1, conv 5 at 2:
    # 0.5 * (1 - d / 2); the head is outside the scope
    rollback = result['rollback']
    for name, value in rollback.items():
        want = {
            '0': 0.5,
            '1': 0.5,
            '3': 0.25,
            '4': 0.25,
            '5': 0.0
        }.get(name.split('.')[1], 0.0) if name.startswith('backbone.') else 0.0
        assert value == pytest.approx(want), name
    assert result['hook']
    assert result['loaded'] == []
    return result


def test_without_mmseg_and_mmpretrain(without):
    """mmdet and mmcv stay (and are version-checked); mmseg's and
    mmpretrain's distributions are gone."""
    run = without(['mmsegmentation', 'mmpretrain'])
    check_core(run, ['mmsegmentation', 'mmpretrain'])


@pytest.mark.parametrize('with_mmcv', [True, False], ids=['core+mmcv', 'core'])
def test_with_torch_and_mmengine_only(without, with_mmcv):
    hidden = ONLY_CORE + ([] if with_mmcv else ['mmcv'])
    check_core(without(hidden), hidden)


def test_a_missing_codebase_names_its_extra_in_one_line(without):
    """With mmdet gone: its scope, a config with an ``mmdet::`` base and
    tools/train.py on that config each say to install ``mmolor[det]``."""
    run = without(['mmdet'])
    config = 'configs/faster_rcnn/faster-rcnn_r50_fpn_olor-adamw_1x_coco.py'
    code = textwrap.dedent(f'''
        from mmengine.config import Config
        from mmolor.utils import load_config, setup_scope
        from mmolor.version import MissingExtraError
        for call in (lambda: setup_scope(Config(dict(default_scope='mmdet'))),
                     lambda: load_config({config!r})):
            try:
                call()
            except MissingExtraError as e:
                print(e)
            else:
                raise SystemExit('no error')
    ''')
    out = run('-c', code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith('this config (it builds mmdet modules) needs '
                               'mmdet, which is not installed: ')
    assert lines[1].startswith(f'{config} needs mmdet, which is not '
                               'installed: ')
    for line in lines:
        assert "pip install 'mmolor[det]'" in line

    out = run('tools/train.py', config, '--work-dir', 'unused')
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == f'error: {lines[1]}'
    # the one line, no traceback
    assert 'Traceback' not in out.stderr


def test_a_base_constructor_of_a_missing_codebase_names_its_extra(without):
    """With mmseg gone: a base constructor only mmseg registers, unscoped
    or scoped, asks for ``mmolor[seg]``; one that mmdet registers too is
    mmdet's."""
    run = without(['mmsegmentation'])
    code = textwrap.dedent('''
        from mmolor.optim import OLOROptimWrapperConstructor
        from mmolor.version import MissingExtraError
        for name in ('LayerDecayOptimizerConstructor',
                     'mmseg.LayerDecayOptimizerConstructor',
                     'mmseg.NoSuchConstructor',
                     'LearningRateDecayOptimizerConstructor'):
            try:
                built = OLOROptimWrapperConstructor(
                    dict(type='OptimWrapper',
                         optimizer=dict(type='OLORAdamW', lr=0.1)),
                    dict(base_constructor=name, num_layers=2))
            except MissingExtraError as e:
                print(e)
            else:
                print(type(built.base).__module__)
    ''')
    out = run('-c', code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()[-4:]
    for line, name in zip(lines, ('LayerDecayOptimizerConstructor',
                                  'mmseg.LayerDecayOptimizerConstructor',
                                  'mmseg.NoSuchConstructor')):
        assert line.startswith(f'paramwise_cfg.base_constructor={name!r} '
                               'needs mmsegmentation, which is not '
                               "installed: pip install 'mmolor[seg]'"), line
    assert lines[3].startswith('mmdet.'), lines[3]


def test_codebases_of_a_config():
    cfg = Config(
        dict(
            default_scope='mmseg',
            model=dict(
                type='EncoderDecoder',
                backbone=dict(type='mmpretrain.ConvNeXt'),
                decode_head=dict(type='mmseg.UPerHead')),
            optim_wrapper=dict(
                constructor='OLOROptimWrapperConstructor',
                optimizer=dict(type='OLORAdamW')),
            custom_hooks=[dict(type='mmdet.NumClassCheckHook')],
            param_scheduler=[dict(type='mmengine.LinearLR')]))
    assert codebases(cfg) == ['mmseg', 'mmpretrain', 'mmdet']
    assert codebases(Config(dict(model=dict(type='Toy')))) == []


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(EXTRAS, 'cls', EXTRAS['cls'] + ('no-such-dist', ))
    assert missing('cls') == ['no-such-dist']
    with pytest.raises(MissingExtraError) as info:
        require_scope('mmpretrain', 'a config')
    assert str(info.value) == (
        "a config needs no-such-dist, which is not installed: pip install "
        "'mmolor[cls]' (or run `make install` in the mmolor checkout)")
    assert isinstance(info.value, ImportError)
    # a scope that is no codebase of an extra asks for nothing
    require_scope('mmengine', 'a config')
    # the installed stack has every extra
    for extra in EXTRAS:
        if extra != 'cls':
            require(extra, 'a test')
    with pytest.raises(MissingExtraError, match=r"'mmolor\[cls\]'"):
        setup_scope(
            Config(
                dict(model=dict(backbone=dict(type='mmpretrain.ConvNeXt')))))
