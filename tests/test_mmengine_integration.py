# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR inside mmengine: Runner + schedulers + auto_scale_lr, gradient
accumulation, GradScaler skips, the authors' AdamB, torch.compile."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.runner import Runner
from torch import nn
from torch.testing import assert_close

from mmolor.optim import OLORAdamW, OLORSGD
from reference import ReferenceAdamB, ReferenceOLOR

C = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)


class LinearLossModel(BaseModel):
    """loss = <w, C> + head: the backbone's gradient is C at every step."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 1, bias=False).double()
        self.head = nn.Linear(1, 1).double()

    def forward(self, inputs, data_samples=None, mode='loss'):
        x = torch.ones(1, 1, dtype=torch.float64)
        return dict(loss=(self.backbone.weight * C).sum() +
                    self.head(x).sum())


class RecordHook(Hook):
    """Backbone weight and lr before each iteration, weight after."""

    def __init__(self):
        self.records = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        opt = runner.optim_wrapper.optimizer
        self.records.append(
            dict(lr=opt.param_groups[0]['lr'],
                 before=runner.model.backbone.weight.detach().clone()))

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.records[-1]['after'] = \
            runner.model.backbone.weight.detach().clone()


def test_runner_schedulers_and_auto_scale_lr(tmp_path):
    """kappa_t = r * lr_t / initial_lr under mmengine's LinearLR warm-up and
    CosineAnnealingLR, with auto_scale_lr doubling the lr after the optimizer
    was built: the ratio uses the scaled initial lr."""
    hook = RecordHook()
    runner = Runner(
        model=LinearLossModel(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=[dict(inputs=torch.zeros(1))] * 40,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=10),
        optim_wrapper=dict(
            constructor='OLOROptimWrapperConstructor',
            optimizer=dict(type='OLORSGD', lr=0.1),
            paramwise_cfg=dict(rollback=dict(max=0.3, scope='backbone'))),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.25, by_epoch=False, begin=0,
                 end=4),
            dict(type='CosineAnnealingLR', by_epoch=False, begin=4, end=10,
                 eta_min=0.01)
        ],
        auto_scale_lr=dict(base_batch_size=1, enable=True),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1000)),
        custom_hooks=[hook])
    runner.train()
    group = runner.optim_wrapper.optimizer.param_groups[0]
    assert group['initial_lr'] == pytest.approx(0.2)  # 0.1 * 2 / 1
    anchor = runner.optim_wrapper.optimizer.state[
        runner.model.backbone.weight]['anchor']
    assert torch.equal(anchor, hook.records[0]['before'])
    lrs = [rec['lr'] for rec in hook.records]
    assert lrs[0] == pytest.approx(0.05) and max(lrs) == pytest.approx(0.2)
    assert len(set(round(lr, 12) for lr in lrs)) >= 8  # lr really moves
    for rec in hook.records:
        theta_hat = rec['before'] - rec['lr'] * C  # plain SGD step
        kappa = 1 - (rec['after'] - anchor) / (theta_hat - anchor)
        assert_close(kappa, torch.full_like(kappa, 0.3 * rec['lr'] / 0.2),
                     rtol=1e-9, atol=1e-12)


def test_gradient_accumulation_reviews_once_per_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    twin = nn.Linear(3, 2).double()
    twin.load_state_dict(model.state_dict())
    ow = OptimWrapper(OLORAdamW(model.parameters(), lr=0.1, rollback=0.2),
                      accumulative_counts=2)
    ow.initialize_count_status(model, 0, 4)
    opt = OLORAdamW(twin.parameters(), lr=0.1, rollback=0.2)
    xs = torch.randn(4, 5, 3, dtype=torch.float64)
    for x in xs:
        ow.update_params(model(x).square().mean())
    for pair in xs.view(2, 2, 5, 3):
        opt.zero_grad()
        for x in pair:
            (twin(x).square().mean() / 2).backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close(p, q, rtol=1e-12, atol=1e-14)
        state = ow.optimizer.state[p]
        assert float(state['step']) == 2
        assert_close(state['anchor'], opt.state[q]['anchor'])


@pytest.mark.parametrize('fused', [False, True])
def test_grad_scaler_skip_on_inf_leaves_params_and_anchors(fused):
    """GradScaler (CPU) skips the whole step, review included, on inf."""
    model = nn.Linear(3, 2)
    try:
        opt = OLORAdamW(model.parameters(), lr=0.1, rollback=0.2,
                        fused=fused)
    except RuntimeError as e:
        pytest.skip(f'fused AdamW unavailable: {e}')
    scaler = torch.amp.GradScaler('cpu', init_scale=8.0)
    scaler.scale(model(torch.randn(4, 3)).sum()).backward()
    scaler.step(opt)
    scaler.update()
    snapshot = {p: {k: v.clone() for k, v in opt.state[p].items()}
                for p in model.parameters()}
    weights = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(torch.randn(4, 3)).sum()).backward()
    model.weight.grad[0, 0] = float('inf')  # a hand-made overflow
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 4.0  # the scaler did see the inf
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p.detach(), w)
        for key, value in snapshot[p].items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_amp_optim_wrapper_fp16_skip_on_cuda():
    from mmengine.optim import AmpOptimWrapper
    model = nn.Linear(3, 2).cuda()
    ow = AmpOptimWrapper(optimizer=OLORAdamW(model.parameters(), lr=0.1,
                                             rollback=0.2),
                         loss_scale='dynamic')
    with ow.optim_context(model):
        ow.update_params(model(torch.randn(4, 3, device='cuda')).sum())
    weights = [p.detach().clone() for p in model.parameters()]
    anchors = [ow.optimizer.state[p]['anchor'].clone()
               for p in model.parameters()]
    with ow.optim_context(model):
        loss = model(torch.randn(4, 3, device='cuda')).sum()
    ow.backward(loss)
    model.weight.grad[0, 0] = float('inf')
    ow.step()
    ow.zero_grad()
    for p, w, a in zip(model.parameters(), weights, anchors):
        assert torch.equal(p.detach(), w)
        assert torch.equal(ow.optimizer.state[p]['anchor'], a)


class TwoPart(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.Tanh(),
                                      nn.Linear(6, 6), nn.Tanh(),
                                      nn.Linear(6, 5))
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_matches_authors_adamb_with_tensor_layers():
    """layer='tensor', r = b * eta_0, OLORAdamW(weight_decay=0) through the
    constructor and mmengine schedulers reproduces AdamB step by step."""
    from mmengine.optim import CosineAnnealingLR, LinearLR
    torch.manual_seed(0)
    model = TwoPart().double()
    eta0, r_max, r_min, power = 0.01, 0.2, 0.02, 2.0
    ow = build_optim_wrapper(model, dict(
        constructor='OLOROptimWrapperConstructor',
        optimizer=dict(type='OLORAdamW', lr=eta0, weight_decay=0.0),
        paramwise_cfg=dict(rollback=dict(max=r_max, min=r_min, power=power,
                                         layer='tensor'))))
    schedulers = [LinearLR(ow, start_factor=0.1, by_epoch=False, end=5),
                  CosineAnnealingLR(ow, by_epoch=False, begin=5, end=20)]
    params = list(model.parameters())
    ref = ReferenceAdamB(
        params, [n.startswith('backbone.') for n, _ in
                 model.named_parameters()],
        b_max=r_max / eta0, b_min=r_min / eta0, power=power)
    gen = torch.Generator().manual_seed(1)
    for step in range(20):
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        ow.zero_grad()
        model(x).square().mean().backward()
        grads = [p.grad.clone() for p in params]
        lr = ow.optimizer.param_groups[0]['lr']
        ow.step()
        ref.step(grads, lr)
        for p, q in zip(params, ref.params):
            assert_close(p.detach(), q, rtol=1e-10, atol=1e-13,
                         msg=f'step {step}')
        for s in schedulers:
            s.step()


def test_matches_authors_adamb_with_their_power_eps():
    """With the authors' eps (1e-8) inside the power, the difference is the
    size of that eps."""
    torch.manual_seed(0)
    model = TwoPart().double()
    ow = build_optim_wrapper(model, dict(
        constructor='OLOROptimWrapperConstructor',
        optimizer=dict(type='OLORAdamW', lr=0.01, weight_decay=0.0),
        paramwise_cfg=dict(rollback=dict(max=0.01, power=1.0,
                                         layer='tensor'))))
    params = list(model.parameters())
    ref = ReferenceAdamB(params, [n.startswith('backbone.') for n, _ in
                                  model.named_parameters()],
                         b_max=1.0, b_min=0.0, power=1.0, power_eps=1e-8)
    for _ in range(10):
        ow.zero_grad()
        model(torch.randn(8, 4, dtype=torch.float64)).square().mean(
        ).backward()
        grads = [p.grad.clone() for p in params]
        ow.step()
        ref.step(grads, 0.01)
    for p, q in zip(params, ref.params):
        assert_close(p.detach(), q, rtol=0, atol=1e-9)


def test_compiled_step_matches_eager():
    """torch.compile(step) (eager backend, so it runs on any machine) gives
    the same result as the uncompiled optimizer."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(4, 3).double()
        opt = OLORSGD(model.parameters(), lr=0.1, momentum=0.9,
                      rollback=0.1, foreach=False)
        step = torch.compile(opt.step, backend='eager') if compiled \
            else opt.step
        for _ in range(5):
            opt.zero_grad()
            model(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
            step()
        results.append([p.detach().clone() for p in model.parameters()] +
                       [opt.state[p]['anchor'] for p in model.parameters()])
    for a, b in zip(*results):
        assert_close(a, b, rtol=0, atol=0)
    assert torch._dynamo.utils.counters['stats']['calls_captured'] > 0


def test_reference_sgd_via_wrapper_with_clip_grad():
    """mmengine's clip_grad runs before the step: learn and review see the
    clipped gradient."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    w0 = model.weight.detach().clone()
    ow = OptimWrapper(OLORSGD(model.parameters(), lr=0.5, rollback=0.25),
                      clip_grad=dict(max_norm=0.1))
    ref = ReferenceOLOR('sgd', [dict(params=[w0], rollback=0.25)])
    for _ in range(3):
        x = torch.ones(1, 3, dtype=torch.float64) * 10
        ow.update_params(model(x).sum())
        g = torch.full((1, 3), 10.0, dtype=torch.float64)
        ref.step([[g * (0.1 / g.norm())]], [0.5])
    assert_close(model.weight.detach(), ref.groups[0]['params'][0],
                 rtol=1e-6, atol=1e-9)
