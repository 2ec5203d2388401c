# Copyright (c) mmolor contributors. All rights reserved.
"""tools/{dist,slurm}_{train,test}.sh start the tool through
tools/launch.sh (their runs on two gloo processes are in test_e2e.py and
test_zero.py)."""
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.parametrize('script, args, expected', [
    ('slurm_train.sh', ['part', 'job', 'cfg.py', 'work', '--amp'],
     ['train.py', '--launcher', 'slurm', 'cfg.py', '--work-dir=work',
      '--amp']),
    ('slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth', '--cfg-options',
                       'a=1 b'],
     ['test.py', '--launcher', 'slurm', 'cfg.py', 'ckpt.pth',
      '--cfg-options', 'a=1 b']),
])
def test_slurm_scripts_start_the_tool_in_srun(tmp_path, script, args,
                                              expected):
    """tools/slurm_{train,test}.sh: srun (here a stand-in on PATH that
    writes its arguments) gets the partition, the job, the tasks of GPUS
    and GPUS_PER_NODE, and runs the tool with --launcher slurm and the
    arguments as given (one argument stays one)."""
    srun = tmp_path / 'srun'
    srun.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > '
                    f'{tmp_path / "argv"}\n')
    srun.chmod(0o755)
    subprocess.run(['bash', f'tools/{script}', *args], cwd=ROOT, check=True,
                   capture_output=True,
                   env=dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}',
                            PYTHON=sys.executable, GPUS='4',
                            GPUS_PER_NODE='2', SRUN_ARGS='--exclusive'))
    argv = (tmp_path / 'argv').read_text().splitlines()
    tool = argv.index(sys.executable)
    assert argv[:tool] == [
        '-p', 'part', '--job-name=job', '--gres=gpu:2', '--ntasks=4',
        '--ntasks-per-node=2', '--cpus-per-task=5', '--kill-on-bad-exit=1',
        '--exclusive'
    ]
    assert argv[tool + 1] == '-u'
    assert osp.relpath(argv[tool + 2], 'tools') == expected[0]
    assert argv[tool + 3:] == expected[1:]


def test_launcher_without_a_mode_says_its_usage():
    out = subprocess.run(['bash', 'tools/launch.sh', 'mpirun', '2',
                          'train.py'], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ,
                                             PYTHON=sys.executable))
    assert out.returncode == 2
    assert out.stderr.startswith('Usage: tools/launch.sh torchrun GPUS')


def test_launcher_without_torch_says_which_python():
    out = subprocess.run(['bash', 'tools/dist_train.sh', 'cfg.py', '2'],
                         cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHON='false'))
    assert out.returncode == 1
    assert "'false' cannot import torch" in out.stderr


@pytest.mark.parametrize('argv', [['cfg.py'], ['cfg.py', 'two']])
def test_dist_train_without_a_number_of_gpus_says_so(argv):
    out = subprocess.run(['bash', 'tools/dist_train.sh', *argv], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    gpus = argv[1] if len(argv) > 1 else ''
    assert out.stderr == (f"tools/launch.sh: GPUS: '{gpus}' (expected a "
                          'number of processes >= 1)\n')
