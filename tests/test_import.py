# Copyright (c) mmolor contributors. All rights reserved.
"""``import mmolor`` is light and silent; mmolor.compat's fixes reach every
runner: one imported before mmolor, after it, or through a config's
``custom_imports`` the way mmdet's and mmseg's own tools load it."""
import ast
import glob
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Checks, in the subprocess, that every fix of mmolor.compat is in place.
CHECK_FIXES = textwrap.dedent('''
    from mmengine.registry import HOOKS, OPTIMIZERS, STRATEGIES
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import CheckpointLoader
    from mmolor.compat.checkpoint import load_from_local
    from mmolor.compat.dist import FSDPStrategy
    from mmolor.compat.zero import ZeroRedundancyOptimizer
    assert CheckpointLoader._schemes[''] is load_from_local
    assert OPTIMIZERS.get('ZeroRedundancyOptimizer') is \\
        ZeroRedundancyOptimizer
    assert STRATEGIES.get('FSDPStrategy') is FSDPStrategy
    assert Runner.save_checkpoint._mmolor_gathers_zero
    assert HOOKS.get('OLORDriftHook') is not None
    print('fixes in place')
''')


def run(code, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, '-c', code],
                          cwd=cwd or REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)


def test_import_is_silent_and_does_not_load_the_runner(tmp_path):
    proc = run(
        textwrap.dedent('''
        import sys
        import mmolor
        from mmolor.optim import OLORAdamW
        heavy = [m for m in ('deepspeed', 'mmengine.runner', 'mmdet',
                             'mmseg', 'mmpretrain', 'mmcv.ops')
                 if m in sys.modules]
        assert not heavy, heavy
        '''),
        cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '' and proc.stderr == ''


@pytest.mark.parametrize(
    'first',
    [
        'import mmolor\nimport mmengine.runner',
        'from mmengine.runner import Runner\nimport mmolor',
        # mmengine._strategy and mmengine.runner import each other
        'import mmolor\nimport mmengine._strategy',
        'import mmengine._strategy\nimport mmolor',
        'import mmolor\nfrom mmengine.runner.checkpoint import '
        'CheckpointLoader',
        # a module of mmolor.compat that imports the runner itself
        'from mmolor.compat.dist import prepare_dist',
        'from mmolor.compat.checkpoint import trust_checkpoints',
        'import mmolor.compat.zero',
    ])
def test_fixes_apply_whatever_is_imported_first(first):
    proc = run(first + '\n' + CHECK_FIXES)
    assert proc.returncode == 0, proc.stderr
    assert 'fixes in place' in proc.stdout


def test_fixes_apply_through_custom_imports(tmp_path):
    """As mmdet's tools/train.py: Runner imported first, then the config,
    whose custom_imports import mmolor."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['mmolor'], "
                   'allow_failed_imports=False)\n')
    proc = run(
        'from mmengine.runner import Runner\n'
        'from mmengine.config import Config\n'
        'import sys\n'
        f'Config.fromfile({str(cfg)!r})\n'
        "assert 'mmolor' in sys.modules\n" + CHECK_FIXES)
    assert proc.returncode == 0, proc.stderr
    assert 'fixes in place' in proc.stdout


def _modules_after(code):
    proc = run(code + '\nimport sys\nprint("\\n".join(sorted(sys.modules)))')
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_optimizer_import_costs_no_more_than_mmengine_optim():
    """``from mmolor.optim import OLORAdamW`` imports nothing beyond what
    ``import mmengine.optim`` imports, besides mmolor's own modules."""
    baseline = _modules_after('import mmengine.optim')
    for code in ('from mmolor.optim import OLORAdamW', 'import mmolor'):
        extra = _modules_after(code) - baseline
        assert {m for m in extra if m.split('.')[0] != 'mmolor'} == set()


def test_optim_does_not_import_compat():
    """mmolor.compat changes mmengine around the optimizers and imports
    mmolor.optim; mmolor.optim imports no module of mmolor.compat, at any
    level of its code."""
    for path in glob.glob(osp.join(REPO, 'mmolor', 'optim', '*.py')):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = '.' * node.level + (node.module or '')
                names = [
                    module + ('.' if node.module else '') + a.name
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(('mmolor.compat', '..compat')), \
                    f'{osp.relpath(path, REPO)}:{node.lineno} imports {name}'
    # Building an OLOR optimizer under ZeRO's config form, too.
    modules = _modules_after(
        textwrap.dedent('''
        from mmolor.optim import OLOROptimWrapperConstructor
        OLOROptimWrapperConstructor(
            dict(type='OptimWrapper',
                 optimizer=dict(type='ZeroRedundancyOptimizer',
                                optimizer_type='OLORAdamW', lr=0.1)),
            dict(rollback=dict(max=0.1)))
        '''))
    assert 'mmolor.optim.constructor' in modules
    assert {m for m in modules if m.startswith('mmolor.compat.')} == set()
