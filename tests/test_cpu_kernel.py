# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's fused CPU kernel is compiled at install, with OpenMP: a training
process only imports it (no compiler, no build, no lock), it runs on torch's
threads, and without it OLOR falls back with one warning."""
import json
import os
import os.path as osp
import subprocess
import sys
import warnings

import pytest
import torch
from torch.testing import assert_close

import mmolor.optim
from mmolor.optim import OLORAdamW, OLORSGD, cpu_kernel, cpu_kernel_error
from test_optim import run_against_reference

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Run in a fresh interpreter: imports mmolor, then times the first fused
# step (the kernel's import included) of OLOR-AdamW and OLOR-SGD. Any call
# of torch's JIT extension builder fails the run.
FIRST_STEP = r'''
import json, os, shutil, sys, time
import torch
import torch.utils.cpp_extension as cpp_extension

def no_build(*args, **kwargs):
    raise AssertionError('torch.utils.cpp_extension was asked to build')

for name in ('load', 'load_inline', '_jit_compile'):
    setattr(cpp_extension, name, no_build)
start = time.perf_counter()
import mmolor
from mmolor.optim import OLORAdamW, OLORSGD, cpu_kernel, cpu_kernel_error
import_s = time.perf_counter() - start
assert 'mmolor.optim._olor_cpu' not in sys.modules  # not loaded by the import
out = dict(import_s=import_s, which=[shutil.which(c) for c in
           ('c++', 'g++', 'gcc', 'ninja')], cwd=os.getcwd())
for name, cls, kwargs in (('adamw', OLORAdamW, dict(lr=1e-3)),
                          ('sgd', OLORSGD, dict(lr=0.1))):
    params = [torch.zeros(n, requires_grad=True) for n in (1 << 20, 300, 7)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = cls(params, rollback=0.1, fused=True, **kwargs)
    start = time.perf_counter()
    opt.step()
    out[name + '_first_step_s'] = time.perf_counter() - start
out['kernel'] = cpu_kernel().__file__
out['error'] = cpu_kernel_error()
print(json.dumps(out))
'''


@pytest.fixture
def kernel():
    module = cpu_kernel()
    assert module is not None, \
        f'fused CPU kernel unavailable: {cpu_kernel_error()}'
    return module


def test_kernel_is_installed_with_the_package(kernel):
    """The kernel is the extension setup.py built beside the sources, not a
    build of torch's JIT loader (whose cache lives elsewhere)."""
    assert osp.dirname(kernel.__file__) == osp.dirname(mmolor.optim.__file__)
    assert kernel.__name__ == 'mmolor.optim._olor_cpu'


def test_kernel_runs_on_torchs_threads(kernel):
    """Built with OpenMP: a parallel region of the kernel's library runs on
    torch.get_num_threads() threads (1 when compiled without -fopenmp)."""
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert kernel.parallel_threads() == threads
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize('olor', [
    dict(),
    dict(review='spd'),
    dict(review='spd', l2sp=0.1),
])
@pytest.mark.parametrize('threads', [1, 2])
def test_kernel_matches_reference_at_each_thread_count(threads, olor):
    """The parallel split (chunks of tensors) changes nothing: the same
    numbers as the reference with 1 and 2 threads, on tensors larger than
    the parallel threshold and cut into several chunks (the review 'spd'
    sums each tensor over its chunks)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for impl in (dict(fused=True), dict(foreach=False)):
            torch.manual_seed(0)
            params = [
                torch.randn(n, requires_grad=True)
                for n in (200_003, 70_000, 5)
            ]
            opt = OLORAdamW(
                params, lr=1e-2, weight_decay=0.1, rollback=0.2, **impl,
                **olor)
            gen = torch.Generator().manual_seed(1)
            for _ in range(6):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
            results.append(params)
        for a, b in zip(*results):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(saved)


def test_fresh_process_finds_the_kernel_ready(tmp_path):
    """A fresh process in another directory, with no compiler or ninja on
    PATH, an empty torch extensions cache holding a stale build lock (what a
    killed JIT build leaves), and torch's JIT builder disabled: its first
    fused step takes the kernel at once."""
    bin_dir = tmp_path / 'bin'  # a PATH with nothing to compile with
    bin_dir.mkdir()
    cache = tmp_path / 'torch_extensions'
    (cache / 'mmolor_olor_cpu').mkdir(parents=True)
    (cache / 'mmolor_olor_cpu' / 'lock').write_text('')
    work = tmp_path / 'elsewhere'
    work.mkdir()
    env = dict(
        os.environ,
        PATH=str(bin_dir),
        TORCH_EXTENSIONS_DIR=str(cache),
        PYTHONPATH=os.pathsep.join(
            [REPO, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    env.pop('MMOLOR_CPU_KERNEL', None)
    proc = subprocess.run([sys.executable, '-c', FIRST_STEP],
                          cwd=work,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['which'] == [None] * 4 and out['cwd'] == str(work)
    assert out['error'] is None
    assert osp.dirname(out['kernel']) == osp.join(REPO, 'mmolor', 'optim')
    assert 'could not' not in proc.stderr and 'not available' not in \
        proc.stderr
    # ~10 ms expected (a 1 M-element step and a 1 ms import); generous for
    # a loaded shared machine, and far from a build (about a minute).
    assert out['adamw_first_step_s'] < 1.0, out
    assert out['sgd_first_step_s'] < 1.0, out


@pytest.fixture
def fresh_loader(monkeypatch):
    """cpu_kernel() as in a new process: nothing loaded or failed yet (and
    again after the test, which may have hidden or switched off the
    kernel)."""
    monkeypatch.delenv('MMOLOR_CPU_KERNEL', raising=False)
    cpu_kernel.cache_clear()
    yield
    monkeypatch.undo()
    cpu_kernel.cache_clear()
    assert cpu_kernel() is not None, cpu_kernel_error()


def test_loading_builds_nothing(fresh_loader, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def no_build(*args, **kwargs):
        raise AssertionError('asked torch to build an extension')

    for name in ('load', 'load_inline'):
        monkeypatch.setattr(cpp_extension, name, no_build)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert cpu_kernel() is not None


def test_missing_kernel_warns_once_and_falls_back(fresh_loader, monkeypatch):
    """Installed without the kernel (no compiler at install time): one
    warning that says what happens and how to get the kernel, then torch's
    step (fused here, as asked) and the review, equal to the reference."""
    monkeypatch.setitem(sys.modules, 'mmolor.optim._olor_cpu', None)
    with pytest.warns(UserWarning, match='not available') as record:
        assert cpu_kernel() is None
    assert len(record) == 1
    assert 'reinstall' in str(record[0].message)
    assert 'mmolor.optim._olor_cpu' in cpu_kernel_error()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no second warning
        run_against_reference(
            'adamw', dict(lr=0.01, weight_decay=0.1), dict(fused=True),
            dtype=torch.float32)
        run_against_reference(
            'sgd', dict(lr=0.1, momentum=0.9), dict(fused=True),
            dtype=torch.float32)


def test_switched_off_kernel_falls_back_quietly(fresh_loader, monkeypatch):
    """MMOLOR_CPU_KERNEL=0: no warning, and torch's step (fused, where
    asked) and the review, equal to the reference."""
    monkeypatch.setenv('MMOLOR_CPU_KERNEL', '0')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert cpu_kernel() is None
        run_against_reference(
            'adamw', dict(lr=0.01, weight_decay=0.1), dict(fused=True),
            dtype=torch.float32)
        run_against_reference(
            'sgd', dict(lr=0.1, momentum=0.9, nesterov=True), dict(),
            dtype=torch.float32)
    assert 'MMOLOR_CPU_KERNEL=0' in cpu_kernel_error()


def test_adam_kernel_rejects_bad_input_before_counting_the_step(kernel):
    """The kernel counts the steps itself, after every check: a rejected
    call leaves weights, moments and step counts as they were."""
    params = [torch.ones(4), torch.ones(3)]
    grads = [torch.ones(4), torch.ones(3)]
    moments = [[torch.zeros(4), torch.zeros(3)] for _ in range(2)]
    steps = [torch.tensor(2.0), torch.tensor(2.0)]
    anchors = [torch.zeros(4), torch.zeros(3, dtype=torch.float16)]
    with pytest.raises(RuntimeError, match=r'anchors\[1\]'):
        kernel.olor_adam_(params, grads, *moments, [], steps, anchors, 0.1,
                          0.9, 0.999, 1e-8, 0.0, True, 0.5, False, False,
                          0.1, True)
    assert all(float(s) == 2 for s in steps)
    assert torch.equal(params[0], torch.ones(4))
    assert torch.equal(moments[0][0], torch.zeros(4))
    with pytest.raises(RuntimeError, match=r'state_steps\[0\]'):
        kernel.olor_adam_(params[:1], grads[:1], moments[0][:1],
                          moments[1][:1], [], [torch.zeros(2)], anchors[:1],
                          0.1, 0.9, 0.999, 1e-8, 0.0, True, 0.5, False, False,
                          0.0, False)


def test_sgd_kernel_takes_momentum_free_steps():
    """Plain SGD (no momentum buffers) through the kernel equals torch's
    SGD followed by the review."""
    torch.manual_seed(0)
    p = torch.randn(100_000, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = OLORSGD([p], lr=0.1, weight_decay=0.01, rollback=0.3, fused=True)
    ref = OLORSGD([q], lr=0.1, weight_decay=0.01, rollback=0.3,
                  foreach=False)
    for _ in range(3):
        g = torch.randn(100_000)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert_close(p, q)


@pytest.mark.parametrize('installed', [True, False])
def test_foreach_groups_take_the_kernel_where_it_applies(
        installed, fresh_loader, monkeypatch):
    """foreach=True on the CPU: float32 groups take OLOR's kernel (the same
    update in one pass); other dtypes, and every group without the kernel,
    torch's foreach step and the review."""
    if not installed:
        monkeypatch.setenv('MMOLOR_CPU_KERNEL', '0')
    paths = []
    takes_kernel = OLORSGD._takes_kernel

    def spy(self, group, k):
        paths.append(takes_kernel(self, group, k))
        return paths[-1]

    monkeypatch.setattr(OLORSGD, '_takes_kernel', spy)
    p32 = torch.randn(1000, requires_grad=True)
    p64 = torch.randn(10, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([dict(params=[p32]), dict(params=[p64])],
                  lr=0.1,
                  rollback=0.1,
                  foreach=True)
    p32.grad, p64.grad = torch.ones_like(p32), torch.ones_like(p64)
    opt.step()
    assert paths == ([True, False] if installed else [False, False])
