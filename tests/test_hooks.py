# Copyright (c) mmolor contributors. All rights reserved.
"""OLORDriftHook: the logged drift and kappa against a hand computation, and
inside a real mmengine Runner (logger + visualizer)."""
import json
import glob
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmdet.models.backbones import ResNet
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn

from mmolor.engine import OLORDriftHook, relative_drift
from reference import rollback_by_depth

R_MAX = 0.2
# ResNet-18 blocks: stem 0, layer1.0 1, layer1.1 2, ..., layer4.1 8.
D = 8


def block_depth(name):
    if not name.startswith('layer'):
        return 0
    stage, block = name.split('.')[:2]
    return 2 * (int(stage[5:]) - 1) + int(block) + 1


def stage_of(name):
    return 'stem' if not name.startswith('layer') else name.split('.')[0]


class TinyDetector(BaseModel):
    """A ResNet-18 backbone (4 base channels) and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = ResNet(depth=18, base_channels=4, out_indices=(3, ))
        self.head = nn.Linear(32, 1)

    def forward(self, inputs, data_samples=None, mode='loss'):
        x = inputs if isinstance(inputs, torch.Tensor) else \
            torch.stack(inputs)
        feat = self.backbone(x.float())[-1].mean(dim=(2, 3))
        return dict(loss=self.head(feat).square().mean())


def optim_wrapper_cfg(olor=True):
    if not olor:
        return dict(optimizer=dict(type='AdamW', lr=0.01))
    return dict(
        constructor='OLOROptimWrapperConstructor',
        optimizer=dict(type='OLORAdamW', lr=0.01),
        paramwise_cfg=dict(rollback=dict(max=R_MAX, layer='block')))


def step(model, optim_wrapper, seed):
    torch.manual_seed(seed)
    loss = model(torch.randn(2, 3, 32, 32))['loss']
    optim_wrapper.update_params(loss)


def fake_runner(model, optim_wrapper, it, max_iters=100):
    """What the hook reads of a runner, recording what it logs."""
    lines, calls = [], []
    return SimpleNamespace(
        model=model,
        optim_wrapper=optim_wrapper,
        iter=it,
        max_iters=max_iters,
        logger=SimpleNamespace(
            lines=lines, info=lines.append, warning=lines.append),
        visualizer=SimpleNamespace(
            calls=calls,
            add_scalars=lambda scalars, step: calls.append((step, scalars))))


def test_hook_is_registered():
    assert HOOKS.get('OLORDriftHook') is OLORDriftHook
    from mmdet.registry import HOOKS as MMDET_HOOKS
    assert MMDET_HOOKS.get('OLORDriftHook') is OLORDriftHook


@pytest.mark.parametrize('kwargs,error', [
    (dict(interval=0), ValueError),
    (dict(interval=1.5), ValueError),
    (dict(interval=True), ValueError),
    (dict(scope=[]), ValueError),
    (dict(scope=[1]), TypeError),
])
def test_hook_rejects_bad_arguments(kwargs, error):
    """Bad arguments; the scope is checked as the constructor's."""
    with pytest.raises(error, match='Invalid'):
        OLORDriftHook(**kwargs)


def test_relative_drift():
    a0, b0 = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])
    a, b = torch.tensor([3.0, 1.0]), torch.tensor([[2.0]])
    # sqrt(1 + 4) / sqrt(9 + 16)
    assert relative_drift([(a, a0), (b, b0)]) == pytest.approx(5**0.5 / 5)
    assert relative_drift([(a0, a0)]) == 0.0
    zero = torch.zeros(2)
    assert relative_drift([(zero, zero)]) == 0.0
    assert relative_drift([(a, zero)]) == float('inf')


def hand_drift(model, theta0):
    """||theta - theta0|| / ||theta0|| per stage, written out."""
    num, den = {}, {}
    for name, p in model.backbone.named_parameters():
        s = stage_of(name)
        diff = p.detach().double() - theta0[name].double()
        num[s] = num.get(s, 0.0) + float(diff.square().sum())
        den[s] = den.get(s, 0.0) + float(theta0[name].double().square().sum())
    return {s: (num[s] / den[s])**0.5 for s in num}


def hand_kappa(model, lr_ratio):
    """Size-weighted mean over the stage of r(depth) * lr / initial_lr."""
    num, den = {}, {}
    for name, p in model.backbone.named_parameters():
        s = stage_of(name)
        r = rollback_by_depth(block_depth(name), D, R_MAX, 0.0, 1.0)
        num[s] = num.get(s, 0.0) + r * lr_ratio * p.numel()
        den[s] = den.get(s, 0) + p.numel()
    return {s: num[s] / den[s] for s in num}


@pytest.mark.parametrize('olor', [True, False])
def test_logged_values_match_a_hand_computation(olor):
    model = TinyDetector()
    optim_wrapper = build_optim_wrapper(model, optim_wrapper_cfg(olor))
    theta0 = {
        n: p.detach().clone()
        for n, p in model.backbone.named_parameters()
    }
    hook = OLORDriftHook(interval=3)
    runner = fake_runner(model, optim_wrapper, it=0)
    hook.before_train(runner)
    for it in range(6):
        step(model, optim_wrapper, seed=it)
        if it == 4:
            # A scheduler has halved the lr: kappa halves with it.
            for group in optim_wrapper.optimizer.param_groups:
                group['lr'] = group.setdefault('initial_lr', group['lr']) / 2
        runner.iter = it
        hook.after_train_iter(runner, batch_idx=it)
    # Logged after iterations 3 and 6 only.
    assert [s for s, _ in runner.visualizer.calls] == [3, 6]
    step_, scalars = runner.visualizer.calls[-1]
    stages = ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    assert list(scalars) == [f'olor_drift/{s}' for s in stages] + \
        [f'olor_kappa/{s}' for s in stages]
    drift = hand_drift(model, theta0)
    kappa = hand_kappa(model, 0.5) if olor else dict.fromkeys(stages, 0.0)
    for s in stages:
        assert drift[s] > 0
        assert scalars[f'olor_drift/{s}'] == pytest.approx(drift[s], rel=1e-12)
        assert scalars[f'olor_kappa/{s}'] == pytest.approx(kappa[s], rel=1e-12)
    if olor:
        assert scalars['olor_kappa/stem'] == pytest.approx(R_MAX / 2)
        assert scalars['olor_kappa/layer4'] < scalars['olor_kappa/layer3']
    line = runner.logger.lines[-1]
    assert line.startswith('OLOR drift') and 'iter 6' in line
    assert f"stem {drift['stem']:.4g}" in line


def test_olor_anchors_win_over_the_hooks_copy():
    """Resumed runs: the hook's copy is taken late, the optimizer's anchor
    (taken at the first step) is the pre-trained weight."""
    model = TinyDetector()
    optim_wrapper = build_optim_wrapper(model, optim_wrapper_cfg(True))
    theta0 = {
        n: p.detach().clone()
        for n, p in model.backbone.named_parameters()
    }
    step(model, optim_wrapper, seed=0)
    hook = OLORDriftHook(interval=1)
    runner = fake_runner(model, optim_wrapper, it=1)
    hook.before_train(runner)  # as after --resume at iteration 1
    assert 'resumed' in runner.logger.lines[-1]
    step(model, optim_wrapper, seed=1)
    hook.after_train_iter(runner, batch_idx=1)
    _, scalars = runner.visualizer.calls[-1]
    # Every stage but the deepest block (r = 0, no anchor) has anchors.
    drift = hand_drift(model, theta0)
    for s in ('stem', 'layer1', 'layer2', 'layer3'):
        assert scalars[f'olor_drift/{s}'] == pytest.approx(drift[s], rel=1e-12)


def test_hook_copies_only_what_no_anchor_covers():
    """Anchored OLOR parameters and frozen ones cost the hook no copy."""
    model = TinyDetector()
    model.backbone.conv1.weight.requires_grad_(False)
    optim_wrapper = build_optim_wrapper(model, optim_wrapper_cfg(True))
    hook = OLORDriftHook(interval=1)
    hook.before_train(fake_runner(model, optim_wrapper, it=0))
    copied = {
        id(p)
        for pairs in hook._stages.values() for p, copy in pairs
        if copy is not None
    }
    # Only the deepest block (r = 0: no anchor) is copied.
    assert copied == {id(p) for p in model.backbone.layer4[1].parameters()}


def test_runner_logs_drift_to_logger_and_visualizer(tmp_path):
    runner = Runner(
        model=TinyDetector(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=[dict(inputs=torch.randn(3, 32, 32))] * 8,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=5),
        optim_wrapper=optim_wrapper_cfg(True),
        param_scheduler=[
            dict(
                type='LinearLR',
                start_factor=0.5,
                by_epoch=False,
                begin=0,
                end=4)
        ],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1000)),
        custom_hooks=[dict(type='OLORDriftHook', interval=2)])
    runner.train()
    (scalars_file, ) = glob.glob(
        osp.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))
    with open(scalars_file) as f:
        records = [json.loads(line) for line in f]
    logged = [r for r in records if 'olor_drift/stem' in r]
    # Every 2 iterations and at the last one.
    assert [r['step'] for r in logged] == [2, 4, 5]
    # Iteration 2 ran at lr = (0.5 + 0.5 / 3) * lr0 (mmengine's LinearLR
    # reaches its end factor at step end - 1): the logged kappa is that of
    # the step just taken, before ParamSchedulerHook changes the lr.
    assert logged[0]['olor_kappa/stem'] == pytest.approx(R_MAX *
                                                         (0.5 + 0.5 / 3))
    assert logged[-1]['olor_kappa/stem'] == pytest.approx(R_MAX)
    assert all(r['olor_drift/layer4'] > 0 for r in logged)
    (log_file, ) = glob.glob(osp.join(str(tmp_path), '*', '*.log'))
    with open(log_file) as f:
        assert 'OLOR drift |theta-theta0|/|theta0| at iter 4' in f.read()


def test_kappa_is_read_without_writing_into_the_optimizer():
    """The hook only reads: before the first step (no ``initial_lr`` yet)
    kappa is the group's rollback, and the group is left as it was."""
    from mmolor.engine.hooks import effective_kappa
    from mmolor.optim import OLORAdamW
    p = torch.zeros(3, requires_grad=True)
    opt = OLORAdamW([p], lr=0.1, rollback=0.2)
    group = opt.param_groups[0]
    before = {k: v for k, v in group.items() if k != 'params'}
    assert effective_kappa(opt, group) == pytest.approx(0.2)
    assert {k: v for k, v in group.items() if k != 'params'} == before
    p.grad = torch.ones(3)
    opt.step()
    group['lr'] = 0.05
    assert effective_kappa(opt, group) == pytest.approx(0.1)
    assert effective_kappa(torch.optim.AdamW([p], lr=0.1),
                           dict(group)) == 0.0
