# Copyright (c) mmolor contributors. All rights reserved.
"""The review rules (``review='olor'|'spd'``) and L2-SP (``l2sp``) of
OLORAdamW / OLORAdam / OLORSGD, on both update paths, against the literal
references in tests/reference.py, AdamSPD and torch."""
import copy
import math
import pickle

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch.testing import assert_close

import mmolor.optim.olor as olor_module
from mmolor.optim import OLORAdam, OLORAdamW, OLORSGD
from reference import ReferenceAdamSPD
from test_optim import (CONFIG_IDS, CONFIGS, IMPLS, LR_FACTORS,
                        OLOR_CLASSES, TORCH_CLASSES,
                        assert_continues_identically, build_olor, make_grads,
                        make_params, run_against_reference, set_grads,
                        train_steps)

SETTINGS = dict(
    spd=dict(review='spd'),
    l2sp=dict(l2sp=0.05),
    spd_l2sp=dict(review='spd', l2sp=0.05))


@pytest.fixture
def kernel_calls(monkeypatch):
    """OLOR's fused CPU kernel with its calls recorded (name, spd flag)."""
    from mmolor.optim import cpu_kernel, cpu_kernel_error
    kernel = cpu_kernel()
    assert kernel is not None, cpu_kernel_error()
    calls = []

    class Recording:

        def __getattr__(self, name):
            fn = getattr(kernel, name)
            return lambda *args: (calls.append((name, args[-1])), fn(*args))[1]

    monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: Recording())
    return calls


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: None)


@pytest.mark.parametrize('setting', list(SETTINGS))
@pytest.mark.parametrize('impl', list(IMPLS), ids=list(IMPLS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_torch_path_matches_reference(base, hparams, impl, setting,
                                      no_kernel):
    """torch's step (for-loop, foreach, fused) + the review, float64."""
    run_against_reference(base, hparams, IMPLS[impl], **SETTINGS[setting])


@pytest.mark.parametrize('anchor_dtype', [None, torch.bfloat16])
@pytest.mark.parametrize('setting', list(SETTINGS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_kernel_matches_reference(base, hparams, setting, anchor_dtype,
                                  kernel_calls):
    """OLOR's fused CPU kernel, float32, with float32 tolerances."""
    run_against_reference(
        base,
        hparams, {},
        dtype=torch.float32,
        anchor_dtype=anchor_dtype,
        **SETTINGS[setting])
    expected = 'olor_sgd_' if base == 'sgd' else 'olor_adam_'
    assert {name for name, _ in kernel_calls} == {expected}
    # The kernel took the review 'spd' itself (its last argument).
    assert any(spd for _, spd in kernel_calls) == ('spd' in setting)


def _final_params(base, hparams, rollbacks, **olor):
    """The params after test_optim's steps (its groups, grads and lr
    schedule)."""
    params = make_params()
    opt = build_olor(base, hparams, olor, params, rollbacks=rollbacks)
    base_lrs = [g['lr'] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(1)
    for step, factor in enumerate(LR_FACTORS, start=1):
        set_grads(params, make_grads(params, step, gen))
        for g, lr in zip(opt.param_groups, base_lrs):
            g['lr'] = lr * factor
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])


def test_the_rules_differ_and_the_review_acts():
    """Not vacuous: on the same steps, 'spd' reviews (differs from no
    review) and holds the weights less than 'olor' does."""
    base, hparams = CONFIGS[1]
    rollbacks = (0.3, 0.5, 0.0, 0.8)
    plain = _final_params(base, hparams, (0.0, 0.0, 0.0, 0.0))
    olor = _final_params(base, hparams, rollbacks, review='olor')
    spd = _final_params(base, hparams, rollbacks, review='spd')
    assert 0 < (spd - plain).norm() < (olor - plain).norm()


@pytest.mark.parametrize('path', ['torch', 'kernel'])
def test_spd_one_tensor_closed_form(path, monkeypatch):
    """SGD, one tensor, rollback 0.5 (constant): the review acts only when
    the gradient step moves the tensor away from its anchor, by the share
    of the new drift the step added."""
    if path == 'torch':
        monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: None)
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = OLORSGD([p], lr=1.0, rollback=0.5, rollback_follows_lr=False,
                  review='spd')
    # Step 1 starts at the anchor: no drift, no review.
    p.grad = torch.tensor([-1.0, 0.0])
    opt.step()
    assert p.tolist() == [2.0, 2.0]
    # Step 2 moves further away (g . d = -1 < 0): |d| 1 -> 3, ratio 2/3,
    # kappa 1/3: theta_hat [4, 2] -> [4, 2] - 1/3 * [3, 0] = [3, 2].
    p.grad = torch.tensor([-2.0, 0.0])
    opt.step()
    assert_close(p.detach(), torch.tensor([3.0, 2.0]))
    # Step 3 moves back toward the anchor (g . d > 0): no review.
    p.grad = torch.tensor([0.5, 0.0])
    opt.step()
    assert_close(p.detach(), torch.tensor([2.5, 2.0]))
    # Step 4, sideways: g . d = -0.15 < 0; theta_hat = [2.6, 1.4], the
    # drift grows from 1.5 to |[1.6, -0.6]|: kappa = 0.5 * that share.
    p.grad = torch.tensor([-0.1, 0.6])
    opt.step()
    d_hat = torch.tensor([1.6, -0.6])
    ratio = (d_hat.norm() - 1.5) / d_hat.norm()
    assert_close(p.detach(),
                 torch.tensor([2.6, 1.4]) - 0.5 * ratio * d_hat)
    assert_close(opt.state[p]['anchor'], torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_olor_adam_spd_is_adamspd(dtype):
    """OLORAdam(review='spd', rollback=lam, rollback_follows_lr=False) is
    AdamSPD with weight decay lam (float64: torch's path; float32: the
    kernel)."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_()
              for s in [(5, 4), (7, ), (3, 3, 2)]]
    ref = ReferenceAdamSPD(params, lr=0.02, lam=0.7)
    opt = OLORAdam(params, lr=0.02, rollback=0.7, rollback_follows_lr=False,
                   review='spd')
    for _ in range(25):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype)
                 for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref.step(grads)
        for p, q in zip(params, ref.params):
            assert_close(p.detach(), q)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('base,hparams', [
    ('adamw', dict(lr=0.01, weight_decay=0.1)),
    ('adam', dict(lr=0.01, weight_decay=0.05, amsgrad=True)),
    ('sgd', dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
])
def test_l2sp_is_torch_on_the_penalised_loss(base, hparams, dtype):
    """``l2sp=alpha`` equals torch's optimizer on
    ``loss + alpha / 2 * ||theta - theta_0||^2`` (float64: torch's path,
    float32: the kernel) and leaves the params' own grads as they were."""
    alpha = 0.3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 2)).to(dtype)
    twin = copy.deepcopy(model)
    theta0 = [p.detach().clone() for p in twin.parameters()]
    opt = OLOR_CLASSES[base](model.parameters(), l2sp=alpha, **hparams)
    ref = TORCH_CLASSES[base](twin.parameters(), **hparams)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(8, 4, generator=gen, dtype=dtype)
        opt.zero_grad()
        model(x).square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g)
                   for p, g in zip(model.parameters(), grads))
        ref.zero_grad()
        penalty = sum((p - a).square().sum()
                      for p, a in zip(twin.parameters(), theta0))
        (twin(x).square().mean() + alpha / 2 * penalty).backward()
        ref.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p, q)


@pytest.mark.parametrize('kernel', [True, False])
@pytest.mark.parametrize('cls,kwargs', [
    (OLORAdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (OLORSGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
])
def test_resume_is_exact(cls, kwargs, kernel, monkeypatch):
    """A state_dict saved mid-run (review 'spd' + L2-SP) resumes bit for
    bit: the groups keep their settings and anchors."""
    if not kernel:
        monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(),
                                torch.nn.Linear(3, 1))

    def build(model):
        return cls([dict(params=model[0].parameters(), rollback=0.2,
                         review='spd', l2sp=0.1),
                    dict(params=model[2].parameters())], **kwargs)

    opt = build(model)
    train_steps(model, opt, 5, seed=1)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    model2 = copy.deepcopy(model)
    # Groups with the defaults ('olor', no L2-SP): the checkpoint's win.
    opt2 = cls([dict(params=model2[0].parameters()),
                dict(params=model2[2].parameters())], **kwargs)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]['review'] == 'spd'
    assert opt2.param_groups[0]['l2sp'] == 0.1
    assert opt2.param_groups[1]['review'] == 'olor'
    assert_continues_identically(model, opt, model2, opt2)


@pytest.mark.parametrize('kwargs,error,regex', [
    (dict(review='SPD'), ValueError,
     r"Invalid review: 'SPD' \(expected one of \('olor', 'spd'\)\)"),
    (dict(review=None), ValueError, r'Invalid review: None'),
    (dict(l2sp=-0.1), ValueError, r'Invalid l2sp: -0\.1'),
    (dict(l2sp=math.nan), ValueError, r'Invalid l2sp: nan'),
    (dict(l2sp=math.inf), ValueError, r'Invalid l2sp: inf'),
    (dict(l2sp='0.1'), TypeError, r"Invalid l2sp: '0\.1'"),
])
@pytest.mark.parametrize('cls', [OLORAdamW, OLORAdam, OLORSGD])
def test_bad_values_are_refused(cls, kwargs, error, regex):
    with pytest.raises(error, match=regex):
        cls([torch.zeros(2, requires_grad=True)], lr=0.1, **kwargs)
    opt = cls([torch.zeros(2, requires_grad=True)], lr=0.1)
    key, value = next(iter(kwargs.items()))
    with pytest.raises(error, match=f'Invalid {key} of param group 1'):
        opt.add_param_group({
            'params': [torch.zeros(1, requires_grad=True)],
            key: value
        })
    assert len(opt.param_groups) == 1


def test_l2sp_alone_keeps_anchors_and_rollback_zero_stays_torch():
    """l2sp > 0 without rollback anchors its params; a group with neither
    stores nothing (it is torch's optimizer)."""
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = OLORAdamW([dict(params=[a], l2sp=0.1), dict(params=[b])], lr=0.1)
    a.grad = torch.ones(3)
    b.grad = torch.ones(3)
    opt.step()
    assert torch.equal(opt.state[a]['anchor'], torch.ones(3))
    assert 'anchor' not in opt.state[b]


# The constructor: paramwise_cfg.rollback.review and paramwise_cfg.l2sp.


def _model():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model.head = torch.nn.Linear(4, 2)
    return model


def _build(model, optimizer=None, **paramwise):
    return build_optim_wrapper(
        model,
        dict(
            constructor='OLOROptimWrapperConstructor',
            optimizer=optimizer or dict(type='OLORAdamW', lr=1e-3),
            paramwise_cfg=paramwise))


def _setting_of(optim_wrapper, model, key):
    groups = optim_wrapper.optimizer.param_groups
    return {
        name: next(g[key] for g in groups if any(p is q for q in g['params']))
        for name, p in model.named_parameters()
    }


def test_constructor_sets_review_in_the_scope():
    model = _model()
    ow = _build(model, rollback=dict(max=0.02, layer='tensor',
                                     review='spd'))
    review = _setting_of(ow, model, 'review')
    rollback = _setting_of(ow, model, 'rollback')
    assert set(review.values()) == {'spd'}
    assert rollback['backbone.0.weight'] == 0.02
    assert rollback['head.weight'] == 0.0
    assert set(_setting_of(ow, model, 'l2sp').values()) == {0.0}


def test_constructor_sets_l2sp_in_its_scope_with_or_without_rollback():
    model = _model()
    ow = _build(model, l2sp=dict(alpha=0.01))
    l2sp = _setting_of(ow, model, 'l2sp')
    assert {n for n, v in l2sp.items() if v == 0.01} == {
        n for n, _ in model.named_parameters() if n.startswith('backbone')}
    assert l2sp['head.bias'] == 0.0
    assert set(_setting_of(ow, model, 'rollback').values()) == {0.0}
    # With rollback, on another scope; custom_keys win.
    ow = _build(
        model,
        rollback=dict(max=0.02, layer='tensor', review='spd'),
        l2sp=dict(alpha=0.5, scope=['backbone.2', 'head']),
        custom_keys={'backbone.0': dict(l2sp=0.25)})
    l2sp = _setting_of(ow, model, 'l2sp')
    assert l2sp['backbone.0.weight'] == 0.25
    assert l2sp['backbone.1.weight'] == 0.0
    assert l2sp['backbone.2.bias'] == l2sp['head.weight'] == 0.5
    assert _setting_of(ow, model, 'review')['head.weight'] == 'spd'


@pytest.mark.parametrize('paramwise,error,regex', [
    (dict(rollback=dict(review='selective')), ValueError,
     r"Invalid paramwise_cfg\.rollback\.review: 'selective'"),
    (dict(l2sp=0.01), TypeError,
     r"paramwise_cfg\.l2sp must be a dict with keys \['alpha', 'scope'\]"),
    (dict(l2sp=dict(scope='backbone')), TypeError,
     r"'alpha' required"),
    (dict(l2sp=dict(alpha=-1.0)), ValueError,
     r'Invalid paramwise_cfg\.l2sp\.alpha: -1\.0'),
    (dict(l2sp=dict(alpha=0.1, weight=2)), ValueError,
     r"Unknown key\(s\) in paramwise_cfg\.l2sp: \['weight'\]"),
    (dict(l2sp=dict(alpha=0.1, scope='bakbone')), ValueError,
     r"Invalid paramwise_cfg\.l2sp\.scope entry 'bakbone'"),
    (dict(l2sp=dict(alpha=0.1, scope=[])), ValueError,
     r'Invalid paramwise_cfg\.l2sp\.scope: \[\]'),
    (dict(custom_keys={'head': dict(review='x')}), ValueError,
     r"Invalid paramwise_cfg\.custom_keys\['head'\]\.review: 'x'"),
    (dict(custom_keys={'head': dict(l2sp=-2)}), ValueError,
     r"Invalid paramwise_cfg\.custom_keys\['head'\]\.l2sp: -2"),
])
def test_constructor_refuses_bad_settings(paramwise, error, regex):
    with pytest.raises(error, match=regex):
        _build(_model(), **paramwise)


def test_constructor_refuses_l2sp_for_a_torch_optimizer():
    with pytest.raises(ValueError, match=r"needs an OLOR optimizer .*"
                       r"got optimizer\.type='AdamW'"):
        _build(_model(), optimizer=dict(type='AdamW', lr=1e-3),
               l2sp=dict(alpha=0.1))


def test_benchmarks_unreviewed_spd_steps_as_adamw():
    """benchmarks/optimizer.py's 'spd, none reviewed' row: with the anchors
    that `unreviewed` puts, the review 'spd' leaves every step as AdamW's
    (the row times the step pass alone), here on the fused kernel."""
    from benchmarks.optimizer import unreviewed
    torch.manual_seed(0)
    ours = [torch.randn(n, requires_grad=True) for n in (1000, 37, 5)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    for p, q in zip(ours, theirs):
        p.grad = torch.randn_like(p) * 1e-3
        q.grad = p.grad.clone()
    kwargs = dict(lr=1e-2, weight_decay=0.05)
    opt = unreviewed(OLORAdamW(ours, rollback=1.0, review='spd', fused=True,
                               rollback_follows_lr=False, **kwargs))
    adamw = torch.optim.AdamW(theirs, **kwargs)
    adamw.step()
    for _ in range(5):
        opt.step()
        adamw.step()
    for p, q in zip(ours, theirs):
        assert_close(p, q, rtol=1e-6, atol=1e-7)
