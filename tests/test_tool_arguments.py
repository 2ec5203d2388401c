# Copyright (c) mmolor contributors. All rights reserved.
"""Every tool, started as a user starts it: no start-up noise from the
libraries, and a bad argument or file refused in argparse's format (exit
code 2, the usage, then one line naming the argument and its value) before
anything runs or any folder is written."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from mmolor.compat.dist import has_accelerator

# Starts the tools, several at once.
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_CONFIG = 'configs/demo/resnet18-w16_adamw_300i_digit-crops.py'
DET_CONFIG = 'configs/demo/mask-rcnn_r18-w16_fpn_olor-adamw_900i_digits.py'
SEG_CONFIG = 'configs/demo/upernet_r18-w16_adamw_300i_digits.py'
AMP_CONFIG = ('configs/convnext/'
              'convnext-base_upernet_olor-adamw_8xb2-amp-160k_ade20k-512x512.py')
# Printed by the libraries when a tool starts (DeepSpeed, torch.jit,
# pkg_resources), unless --verbose.
NOISE = ('real_accelerator', 'FutureWarning', 'UserWarning', 'Traceback')

# tool -> [(arguments, what the error line must name)]; WORK stands for a
# work dir that must not be created.
BAD = {
    'tools/train.py': [
        (['nope.py', '--work-dir', 'WORK'], "config: no such file 'nope.py'"),
        (['README.md', '--work-dir', 'WORK'], "config: 'README.md'"),
        ([CLS_CONFIG, '--work-dir', 'WORK', '--cfg-options', 'oops'],
         "--cfg-options: invalid item 'oops'"),
        ([CLS_CONFIG, '--work-dir', 'WORK', '--resume', 'nope.pth'],
         "--resume: no such file 'nope.pth'"),
        ([SEG_CONFIG, '--work-dir', 'WORK', '--auto-scale-lr'],
         '--auto-scale-lr needs "auto_scale_lr"'),
    ],
    'tools/test.py': [
        ([CLS_CONFIG, 'nope.pth', '--work-dir', 'WORK'],
         "checkpoint: no such file 'nope.pth'"),
        (['nope.py', 'nope.pth', '--work-dir', 'WORK'],
         "config: no such file 'nope.py'"),
        ([DET_CONFIG, 'README.md', '--work-dir', 'WORK', '--out', 'x.json'],
         "--out must be a .pkl or .pickle file, got 'x.json'"),
        ([SEG_CONFIG, 'README.md', '--work-dir', 'WORK', '--tta'],
         '--tta needs tta_pipeline'),
    ],
    'tools/demo.py': [
        (['--seed', '-1', '--work-dir', 'WORK'], '--seed: -1'),
        (['--iters', '1', '--work-dir', 'WORK'], '--iters: 1'),
    ],
    'tools/analysis_tools/upstream_retention.py': [
        (['nope.py', 'a.pth', 'b.pth', '--work-dir', 'WORK'],
         "upstream_config: no such file 'nope.py'"),
        ([CLS_CONFIG, 'nope.pth', 'README.md', '--work-dir', 'WORK'],
         "upstream_checkpoint: no such file 'nope.pth'"),
        ([CLS_CONFIG, 'README.md', 'nope.pth', '--work-dir', 'WORK'],
         "checkpoint: no such file 'nope.pth'"),
        # the standard: a detector config as the upstream classifier
        ([DET_CONFIG, 'README.md', 'README.md', '--work-dir', 'WORK'],
         f"{DET_CONFIG}: model type 'MaskRCNN' is not an mmpretrain "
         'ImageClassifier'),
    ],
    'tools/analysis_tools/forgetting_benchmark.py': [
        (['--seeds', '-1', '--work-dir', 'WORK'],
         '--seeds: invalid value(s) [-1]'),
        (['--r-max', '-0.5', '--work-dir', 'WORK'],
         '--r-max: invalid value(s) [-0.5]'),
        (['--report', 'README.md'],
         "--report: 'README.md' is not a forgetting.json"),
        (['--select', 'nope.json', '--work-dir', 'WORK'],
         "--select: no such file 'nope.json'"),
    ],
    'tools/analysis_tools/benchmark_optimizer.py': [
        (['--steps', '0'], '--steps: 0 (expected >= 1)'),
        (['--backbones', 'nope'], "--backbones: invalid choice: 'nope'"),
    ],
    'tools/analysis_tools/backbone_census.py': [
        (['--only', 'ResNet'], "--only: unknown backbone type(s) ['ResNet']"),
    ],
    'tools/analysis_tools/plot_rollback.py': [
        (['nope.py'], "config: no such file 'nope.py'"),
        ([DET_CONFIG, '--out', 'WORK/r.png'], '--out: no such directory'),
    ],
    'tools/check_install.py': [
        (['--nope'], 'unrecognized arguments: --nope'),
    ],
}
if not has_accelerator():
    # A config of its own asking for AMP (AmpOptimWrapper needs a GPU).
    BAD['tools/train.py'].append(([AMP_CONFIG, '--work-dir', 'WORK'],
                                  f"config: '{AMP_CONFIG}' trains with AMP"))


def run_all(cases, tmp_path):
    """Start every case at once; return (case, work dir, result)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONWARNINGS', None)
    procs = []
    for i, (tool, argv, expected) in enumerate(cases):
        work = str(tmp_path / f'work{i}')
        argv = [a.replace('WORK', work) for a in argv]
        procs.append(((tool, argv, expected), work, subprocess.Popen(
            [sys.executable, tool, *argv], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    return [(case, work, proc, *proc.communicate(timeout=300))
            for case, work, proc in procs]


@pytest.mark.parametrize('tool', list(BAD))
def test_bad_arguments_are_refused_before_any_work(tool, tmp_path):
    cases = [(tool, argv, expected) for argv, expected in BAD[tool]]
    # --help starts the tool without the libraries' notices.
    cases.append((tool, ['--help'], None))
    for (_, argv, expected), work, proc, out, err in run_all(cases,
                                                            tmp_path):
        for noise in NOISE:
            assert noise not in err, (argv, err)
        if expected is None:
            assert proc.returncode == 0 and err == '', (argv, err)
            assert out.startswith('usage: '), out
            continue
        assert proc.returncode == 2, (argv, proc.returncode, err)
        assert err.startswith('usage: '), (argv, err)
        line = err.rstrip('\n').splitlines()[-1]
        assert line.startswith(f'{osp.basename(tool)}: error: '), (argv, err)
        assert expected in line, (argv, line)
        assert not osp.exists(work), argv


def test_check_install_says_one_line_and_nothing_else(tmp_path):
    """What `make install` ends with: the stack's one ready line, without
    the libraries' notices (they come back with --verbose)."""
    [(_, _, proc, out, err), (_, _, verbose, _, verbose_err)] = run_all(
        [('tools/check_install.py', [], None),
         ('tools/check_install.py', ['--verbose'], None)], tmp_path)
    assert proc.returncode == 0 and err == '', err
    [line] = out.splitlines()
    assert line.startswith('mmolor ') and '(ops ran)' in line, line
    assert 'fused CPU kernel ready' in line, line
    assert verbose.returncode == 0
    assert any(noise in verbose_err for noise in NOISE[:3]), verbose_err
