# Copyright (c) mmolor contributors. All rights reserved.
"""The functions mmolor.optim offers to the rest of mmolor and to tools:
which optimizer is OLOR's, which groups keep anchors, the scope check, the
fused CPU kernel, and ZeRO's local optimizer class."""
import os
import os.path as osp
import subprocess
import sys
import textwrap
from types import ModuleType, SimpleNamespace

import pytest
import torch
from torch import nn

import mmolor.optim
from mmolor.optim import (OLORAdam, OLORAdamW, OLORSGD, cpu_kernel,
                          cpu_kernel_error, is_anchored, is_olor_optimizer,
                          local_optimizer_class, olor_optimizer,
                          validate_scope)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_exported():
    for name in ('is_olor_optimizer', 'olor_optimizer', 'is_anchored',
                 'validate_scope', 'local_optimizer_class', 'cpu_kernel',
                 'cpu_kernel_error'):
        assert name in mmolor.optim.__all__, name
        assert getattr(mmolor.optim, name).__doc__, name


@pytest.mark.parametrize('cls', [OLORAdamW, OLORAdam, OLORSGD])
def test_olor_optimizers_are_recognised(cls):
    optimizer = cls(nn.Linear(2, 2).parameters(), lr=0.1, rollback=0.1)
    assert is_olor_optimizer(optimizer)
    assert olor_optimizer(optimizer) is optimizer


@pytest.mark.parametrize('cls',
                         [torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD])
def test_other_optimizers_are_not(cls):
    optimizer = cls(nn.Linear(2, 2).parameters(), lr=0.1)
    assert not is_olor_optimizer(optimizer)
    assert olor_optimizer(optimizer) is None
    assert not is_olor_optimizer(None) and olor_optimizer(None) is None


def test_olor_optimizer_looks_inside_a_wrapper():
    """A ZeRO optimizer keeps its local optimizer (this rank's shard) in
    ``optim``: it is the OLOR optimizer; the wrapper itself is not one."""
    olor = OLORAdamW(nn.Linear(2, 2).parameters(), lr=0.1)
    wrapper = SimpleNamespace(optim=olor, param_groups=olor.param_groups)
    assert olor_optimizer(wrapper) is olor
    assert not is_olor_optimizer(wrapper)
    adamw = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=0.1)
    assert olor_optimizer(SimpleNamespace(optim=adamw)) is None


def test_olor_optimizer_of_zero():
    """mmolor's ZeroRedundancyOptimizer (mmengine's config form), in a
    one-process gloo group of its own interpreter."""
    code = textwrap.dedent('''
        import torch
        import torch.distributed as dist
        from torch import nn

        import mmolor.compat.zero as zero
        from mmolor.optim import (OLORAdamW, is_olor_optimizer,
                                  olor_optimizer)

        dist.init_process_group(
            'gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)
        try:
            model = nn.Linear(2, 2)
            sharded = zero.ZeroRedundancyOptimizer(
                model.parameters(), optimizer_type='OLORAdamW', lr=0.1,
                rollback=0.1)
            assert isinstance(sharded.optim, OLORAdamW)
            assert olor_optimizer(sharded) is sharded.optim
            assert not is_olor_optimizer(sharded)
            plain = zero.ZeroRedundancyOptimizer(
                model.parameters(), optimizer_type='AdamW', lr=0.1)
            assert olor_optimizer(plain) is None
        finally:
            dist.destroy_process_group()
        print('ok')
    ''')
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == 'ok'


def test_is_anchored():
    """A group keeps anchors when it rolls back, takes L2-SP, or will roll
    back once a scheduler raises its rollback; the others store none."""
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(4)))
    settings = [
        dict(rollback=0.0),
        dict(rollback=0.1),
        dict(rollback=0.0, l2sp=0.01),
        dict(rollback=0.0),
    ]
    groups = [
        dict(params=layer.parameters(), **setting)
        for layer, setting in zip(model, settings)
    ]
    optimizer = OLORAdamW(groups, lr=0.1)
    # as a ParamScheduler records it, ramping the rollback up from 0
    optimizer.param_groups[3]['initial_rollback'] = 0.1
    assert [is_anchored(g)
            for g in optimizer.param_groups] == [False, True, True, True]
    model(torch.randn(3, 2)).sum().backward()
    optimizer.step()
    for group in optimizer.param_groups:
        for p in group['params']:
            assert ('anchor' in optimizer.state[p]) == is_anchored(group)


def test_validate_scope():
    assert validate_scope('backbone') == ['backbone']
    assert validate_scope(('backbone', 'neck')) == ['backbone', 'neck']
    assert validate_scope(['']) == ['']
    with pytest.raises(ValueError, match=r'Invalid scope: \[\] \(name at '):
        validate_scope([])
    with pytest.raises(TypeError, match=r'Invalid scope: \[1\] \(expected'):
        validate_scope([1])
    with pytest.raises(TypeError, match=r'Invalid my\.scope: None'):
        validate_scope(None, 'my.scope')


def test_cpu_kernel():
    """The kernel module, or None with the reason; compiled at install."""
    kernel = cpu_kernel()
    assert kernel is not None, cpu_kernel_error()
    assert isinstance(kernel, ModuleType)
    assert callable(kernel.olor_adam_) and callable(kernel.olor_sgd_)
    assert cpu_kernel_error() is None


def test_local_optimizer_class():
    import mmolor.compat.zero as zero
    assert zero.local_optimizer_class is local_optimizer_class
    assert local_optimizer_class('SGD') is torch.optim.SGD
    assert local_optimizer_class('OLORSGD') is OLORSGD
    assert local_optimizer_class(OLORAdam) is OLORAdam
    assert local_optimizer_class('NoSuchOptimizer') is None
    assert local_optimizer_class(3) is None
