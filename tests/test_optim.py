# Copyright (c) mmolor contributors. All rights reserved.
"""OLORAdamW / OLORAdam / OLORSGD against the literal reference and torch."""
import copy
import math
import pickle

import pytest
import torch
from torch.testing import assert_close

from mmolor.optim import OLORAdam, OLORAdamW, OLORSGD
from reference import ReferenceOLOR

OLOR_CLASSES = dict(adamw=OLORAdamW, adam=OLORAdam, sgd=OLORSGD)
TORCH_CLASSES = dict(
    adamw=torch.optim.AdamW, adam=torch.optim.Adam, sgd=torch.optim.SGD)

# (base, hyper-parameters); foreach / fused are added by IMPLS.
CONFIGS = [
    ('adamw', dict(lr=0.01, weight_decay=0.0)),
    ('adamw', dict(lr=0.01, weight_decay=0.1)),
    ('adamw', dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ('adamw', dict(lr=0.01, betas=(0.8, 0.99), maximize=True)),
    ('adam', dict(lr=0.01)),
    ('adam', dict(lr=0.01, weight_decay=0.05, amsgrad=True)),
    ('sgd', dict(lr=0.1)),
    ('sgd', dict(lr=0.1, momentum=0.9)),
    ('sgd', dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ('sgd', dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
]
IMPLS = dict(forloop=dict(foreach=False), foreach=dict(foreach=True),
             fused=dict(fused=True))
CONFIG_IDS = [f'{b}-{"-".join(f"{k}={v}" for k, v in c.items())}'
              for b, c in CONFIGS]
# lr factor of each step: a warm-up, then a decay (what a scheduler does).
LR_FACTORS = [0.1, 0.4, 0.7, 1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
STATE_KEYS = ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'momentum_buffer')


def make_params(dtype=torch.float64, seed=0):
    """Params of assorted shapes: 2-D, 1-D, 0-dim and a non-contiguous one."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3, ), (), (2, 2, 3), (5, ), (2, 3)]
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    params.append(torch.randn(3, 4, generator=gen, dtype=dtype).t())
    assert not params[-1].is_contiguous()
    return [p.requires_grad_() for p in params]


def make_groups(params, rollbacks=(0.3, 0.5, 0.0, 0.8)):
    """Four groups: several rollbacks, an empty group, a fixed-rollback one."""
    return [
        dict(params=[params[0], params[1], params[2], params[6]],
             rollback=rollbacks[0]),
        dict(params=[], rollback=rollbacks[1]),
        dict(params=[params[3], params[4]], rollback=rollbacks[2]),
        dict(params=[params[5]], rollback=rollbacks[3],
             rollback_follows_lr=False, lr_mult=0.5),
    ]


def make_grads(params, step, gen):
    """Random grads; params[1] has none on steps 3 and 7, params[4] never."""
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype)
             for p in params]
    if step in (3, 7):
        grads[1] = None
    grads[4] = None
    return grads


def build_olor(base, hparams, impl, params, rollbacks=(0.3, 0.5, 0.0, 0.8)):
    groups = make_groups(params, rollbacks)
    for g in groups:
        g['lr'] = hparams['lr'] * g.pop('lr_mult', 1.0)
    try:
        return OLOR_CLASSES[base](groups, **hparams, **impl)
    except RuntimeError as e:  # e.g. a kernel this torch lacks on the CPU
        pytest.skip(f'{impl} not supported here: {e}')


def set_grads(params, grads):
    # Grads take their param's strides, as autograd's do (torch's fused CPU
    # kernels assume it: a contiguous grad on a transposed param is misread).
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.empty_like(p).copy_(g)


@pytest.mark.parametrize('impl', list(IMPLS), ids=list(IMPLS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_matches_reference(base, hparams, impl):
    """Params, anchors and base state equal the reference after each step.

    The lr changes every step (warm-up then decay) with `initial_lr` set, as
    a scheduler does, so the lr-following rollback is exercised.
    """
    run_against_reference(base, hparams, IMPLS[impl])


def run_against_reference(base,
                          hparams,
                          impl,
                          dtype=torch.float64,
                          anchor_dtype=None,
                          **olor):
    """Step an OLOR optimizer and the literal reference side by side and
    compare params, anchors and base state after every step; returns the
    optimizer and params after the last step. ``olor``: more OLOR keyword
    arguments (``review``, ``l2sp``)."""
    impl = dict(impl, **olor)
    params = make_params(dtype)
    if anchor_dtype is not None:
        # Start from values the anchor dtype holds exactly, so its anchors
        # equal the reference's.
        with torch.no_grad():
            for p in params:
                p.copy_(p.to(anchor_dtype))
        impl = dict(impl, anchor_dtype=anchor_dtype)
    never_stepped = params[4].detach().clone()
    opt = build_olor(base, hparams, impl, params)
    for g in opt.param_groups:
        g['initial_lr'] = g['lr']
    ref = ReferenceOLOR(base, [
        dict(hparams, **{
            k: v
            for k, v in g.items() if k != 'lr'
        }) for g in opt.param_groups
    ])
    base_lrs = [g['lr'] for g in opt.param_groups]
    index = {id(p): i for i, p in enumerate(params)}
    gen = torch.Generator().manual_seed(1)
    for step, factor in enumerate(LR_FACTORS, start=1):
        grads = make_grads(params, step, gen)
        set_grads(params, grads)
        lrs = [lr * factor for lr in base_lrs]
        for g, lr in zip(opt.param_groups, lrs):
            g['lr'] = lr
        opt.step()
        ref.step([[grads[index[id(p)]] for p in g['params']]
                  for g in opt.param_groups], lrs)
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group['params']):
                ref_p = ref.groups[gi]['params'][pi]
                ref_state = ref.state[gi][pi]
                assert_close(p.detach(), ref_p, msg=f'step {step} param')
                state = opt.state[p]
                assert ('anchor' in state) == ('anchor' in ref_state)
                if 'anchor' in ref_state:
                    assert state['anchor'].dtype == (anchor_dtype or dtype)
                    assert_close(state['anchor'].to(dtype),
                                 ref_state['anchor'])
                for key in STATE_KEYS:
                    assert (key in state) == (key in ref_state), key
                    if key in ref_state:
                        assert_close(
                            state[key],
                            ref_state[key],
                            msg=f'step {step} {key}')
                if 'step' in ref_state:
                    assert float(state['step']) == ref_state['step']
    assert torch.equal(params[4].detach(), never_stepped)
    assert len(opt.state[params[4]]) == 0
    if not olor.get('l2sp'):
        assert all('anchor' not in opt.state[p]
                   for p in opt.param_groups[2]['params'])
    return opt, params


@pytest.mark.parametrize('impl', list(IMPLS), ids=list(IMPLS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_rollback_zero_is_torch_bitwise(base, hparams, impl):
    """With rollback 0 everywhere, OLOR is torch's optimizer, bit for bit."""
    params = make_params(torch.float32)
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    opt = build_olor(base, hparams, IMPLS[impl], params, (0.0, ) * 4)
    twin_groups = make_groups(twin_params)
    for g, og in zip(twin_groups, opt.param_groups):
        g.pop('rollback'), g.pop('rollback_follows_lr', None)
        g.pop('lr_mult', None)
        g['lr'] = og['lr']
    twin = TORCH_CLASSES[base](twin_groups, **hparams, **IMPLS[impl])
    step_with_twin(opt, twin, params, twin_params, 10, range(len(params)))


def step_with_twin(opt, twin, params, twin_params, steps, checked):
    """``steps`` steps of ``opt`` and of its torch ``twin`` on the same
    gradients; after each, the parameters at the indices ``checked`` and
    their state are the twin's, bit for bit."""
    gen = torch.Generator().manual_seed(2)
    for step in range(1, steps + 1):
        grads = make_grads(params, step, gen)
        set_grads(params, grads)
        set_grads(twin_params, grads)
        opt.step()
        twin.step()
        for i in checked:
            p, q = params[i], twin_params[i]
            assert torch.equal(p, q)
            assert opt.state[p].keys() == twin.state[q].keys()
            for key, value in twin.state[q].items():
                assert torch.equal(opt.state[p][key], value)


@pytest.mark.parametrize('base', list(OLOR_CLASSES))
def test_foreach_matches_forloop(base):
    """The foreach review and the single-tensor review agree (float64)."""
    hparams = dict(CONFIGS[[b for b, _ in CONFIGS].index(base)][1])
    runs = []
    for impl in ('forloop', 'foreach'):
        params = make_params()
        opt = build_olor(base, hparams, IMPLS[impl], params)
        gen = torch.Generator().manual_seed(3)
        for step in range(1, 8):
            set_grads(params, make_grads(params, step, gen))
            opt.step()
        runs.append((params, opt))
    (p1, o1), (p2, o2) = runs
    for a, b in zip(p1, p2):
        assert_close(a, b, rtol=0, atol=1e-14)
        for key in o1.state[a]:
            assert_close(o1.state[a][key], o2.state[b][key])


@pytest.mark.parametrize('cls', list(OLOR_CLASSES.values()))
def test_rollback_one_pins_params_to_anchor(cls):
    params = make_params()
    start = [p.detach().clone() for p in params]
    opt = cls(params, lr=0.1, rollback=1.0, rollback_follows_lr=False)
    gen = torch.Generator().manual_seed(4)
    for step in range(1, 6):
        set_grads(params, make_grads(params, step, gen))
        opt.step()
        for p, p0 in zip(params, start):
            assert torch.equal(p.detach(), p0)


@pytest.mark.parametrize('follows', [True, False])
def test_one_step_closed_form(follows):
    """SGD: theta_1 = theta_0 - (1 - r) lr g; a zero grad then pulls back by
    (1 - kappa): theta_2 - theta_0 = (1 - r)^2 (theta_1 - theta_0) / (1 - r).
    """
    lr, r = 0.5, 0.25
    theta0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.2, 0.4, -0.6], dtype=torch.float64)
    p = theta0.clone().requires_grad_()
    opt = OLORSGD([p], lr=lr, rollback=r, rollback_follows_lr=follows)
    p.grad = g.clone()
    opt.step()
    assert_close(p.detach(), theta0 - (1 - r) * lr * g, rtol=0, atol=1e-15)
    p.grad = torch.zeros_like(g)
    opt.step()
    assert_close(p.detach(), theta0 - (1 - r)**2 * lr * g, rtol=0,
                 atol=1e-15)
    # Halving the lr halves the pull when following the lr.
    opt.param_groups[0]['lr'] = lr / 2
    before = p.detach() - theta0
    opt.step()
    kappa = r / 2 if follows else r
    assert_close(p.detach() - theta0, (1 - kappa) * before, rtol=0,
                 atol=1e-15)


def test_initial_lr_is_first_step_lr_without_scheduler():
    p = torch.ones(2, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([p], lr=0.2, rollback=0.5)
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()  # theta_1 = 1 - 0.2 * (1 - 0.5)
    assert opt.param_groups[0]['initial_lr'] == 0.2
    assert_close(p.detach(), torch.full((2, ), 0.9, dtype=torch.float64))


def test_a_step_at_lr_zero_does_not_become_the_initial_lr():
    """Without a scheduler, lr_0 is the first positive lr: kappa then
    follows the lr (a first step at lr 0 must not pin kappa at r)."""
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([p], lr=0.0, rollback=0.5)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    assert 'initial_lr' not in opt.param_groups[0]
    assert torch.equal(p.detach(), torch.ones(1, dtype=torch.float64))
    for lr, kappa in ((0.2, 0.5), (0.1, 0.25)):
        before = p.detach().clone()
        opt.param_groups[0]['lr'] = lr
        opt.step()
        theta_hat = before - lr
        assert_close(p.detach(), theta_hat + kappa * (1.0 - theta_hat),
                     rtol=0, atol=1e-15)
    assert opt.param_groups[0]['initial_lr'] == 0.2


def test_kappa_is_capped_at_one():
    """lr above the initial lr (e.g. OneCycle) never overshoots the anchor."""
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([p], lr=0.1, rollback=0.5)
    opt.param_groups[0]['initial_lr'] = 0.01  # lr / initial_lr = 10
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    assert torch.equal(p.detach(), torch.zeros(2, dtype=torch.float64))


def test_anchor_is_captured_at_first_step_not_construction():
    """mmengine loads pre-trained weights after building the optimizer."""
    model = torch.nn.Linear(3, 2)
    opt = OLORAdamW(model.parameters(), lr=0.01, rollback=0.1)
    assert len(opt.state) == 0
    pretrained = {k: torch.randn_like(v) for k, v in
                  model.state_dict().items()}
    model.load_state_dict(pretrained)  # what init_cfg / load_from do
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(opt.state[p]['anchor'], pretrained[name])
        assert not torch.equal(p.detach(), pretrained[name])


def train_steps(model, opt, steps, seed):
    """``steps`` steps of ``opt`` on a toy loss, the inputs drawn from
    ``seed`` in the model's dtype."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(6, 4, generator=gen, dtype=dtype)
        model(x).square().mean().backward()
        opt.step()


def assert_continues_identically(model, opt, model2, opt2):
    """Five more steps of each pair end with the same weights and optimizer
    state, bit for bit."""
    for net, optimizer in ((model, opt), (model2, opt2)):
        train_steps(net, optimizer, 5, seed=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(opt2.state[q][key], value), key


@pytest.mark.parametrize('cls,kwargs', [
    (OLORAdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (OLORSGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(),
                                torch.nn.Linear(3, 1)).double()
    groups = [dict(params=model[0].parameters(), rollback=0.2),
              dict(params=model[2].parameters())]
    opt = cls(groups, **kwargs)
    train_steps(model, opt, 5, seed=1)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))

    model2 = copy.deepcopy(model)
    with torch.no_grad():  # different current weights: must not re-anchor
        for p in model2.parameters():
            p.add_(1.0)
    groups2 = [dict(params=model2[0].parameters(), rollback=0.7),
               dict(params=model2[2].parameters())]
    opt2 = cls(groups2, **kwargs)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]['rollback'] == 0.2
    for p, q in zip(model.parameters(), model2.parameters()):
        for key, value in opt.state[p].items():
            assert torch.equal(opt2.state[q][key], value), key
    model2.load_state_dict(model.state_dict())
    assert_continues_identically(model, opt, model2, opt2)


def test_loads_state_dict_of_torch_optimizer():
    """A torch AdamW state_dict (no rollback keys) loads: groups get the
    optimizer's default rollback, and the first step captures anchors."""
    model = torch.nn.Linear(3, 2)
    torch_opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 3)).sum().backward()
    torch_opt.step()
    opt = OLORAdamW(model.parameters(), lr=0.01, rollback=0.3)
    opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]['rollback'] == 0.3
    assert opt.param_groups[0]['rollback_follows_lr'] is True
    before = {p: p.detach().clone() for p in model.parameters()}
    opt.step()
    for p in model.parameters():
        assert torch.equal(opt.state[p]['anchor'], before[p])


def test_deepcopy_pickle_and_repr():
    model = torch.nn.Linear(3, 2)
    opt = OLORSGD(model.parameters(), lr=0.1, rollback=0.05)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.defaults['rollback'] == 0.05
        assert clone.param_groups[0]['rollback'] == 0.05
        clone.add_param_group(dict(params=[torch.zeros(1,
                                                       requires_grad=True)]))
        assert clone.param_groups[-1]['rollback'] == 0.05
    text = repr(opt)
    assert 'OLORSGD' in text and 'rollback: 0.05' in text


@pytest.mark.parametrize('cls', list(OLOR_CLASSES.values()))
def test_closure(cls):
    """step(closure) evaluates the closure and returns its loss; the result
    equals calling backward by hand and step()."""
    results = []
    for use_closure in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1).double()
        torch.nn.init.constant_(model.weight, 0.5)
        opt = cls(model.parameters(), lr=0.05, rollback=0.1)
        x = torch.linspace(-1, 1, 12, dtype=torch.float64).view(4, 3)
        losses = []
        for _ in range(10):
            def closure():
                opt.zero_grad()
                loss = model(x).square().mean()
                loss.backward()
                return loss
            if use_closure:
                losses.append(opt.step(closure).item())
            else:
                losses.append(float(closure()))
                opt.step()
        results.append((losses, model.weight.detach().clone()))
        assert losses[-1] < losses[0]  # goes the right direction
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize('kwargs,error,regex', [
    (dict(rollback=-0.1), ValueError, r'Invalid rollback: -0\.1'),
    (dict(rollback=1.5), ValueError, r'Invalid rollback: 1\.5'),
    (dict(rollback=math.nan), ValueError, r'Invalid rollback: nan'),
    (dict(rollback='0.1'), TypeError, r"Invalid rollback: '0\.1'"),
    (dict(rollback=True), TypeError, r'Invalid rollback: True'),
    (dict(rollback_follows_lr='yes'), TypeError,
     r"Invalid rollback_follows_lr: 'yes'"),
    (dict(differentiable=True), RuntimeError, r'differentiable=True'),
    (dict(lr=-1.0), ValueError, r'Invalid learning rate: -1\.0'),
])
@pytest.mark.parametrize('cls', list(OLOR_CLASSES.values()))
def test_errors(cls, kwargs, error, regex):
    kwargs = dict(dict(lr=0.1), **kwargs)
    with pytest.raises(error, match=regex):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize('cls', list(OLOR_CLASSES.values()))
def test_bad_group_rollback_names_the_group(cls):
    groups = [dict(params=[torch.zeros(2, requires_grad=True)]),
              dict(params=[torch.zeros(2, requires_grad=True)],
                   rollback=2.0)]
    with pytest.raises(ValueError,
                       match=r'Invalid rollback of param group 1: 2\.0'):
        cls(groups, lr=0.1)
    opt = cls(groups[:1], lr=0.1)
    with pytest.raises(TypeError, match='rollback_follows_lr of param group'):
        opt.add_param_group(dict(params=[torch.zeros(1, requires_grad=True)],
                                 rollback_follows_lr=1))
    assert len(opt.param_groups) == 1  # the bad group was not kept


@pytest.mark.parametrize('cls', [OLORSGD, OLORAdamW])
def test_sparse_gradients_raise_at_step(cls):
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = cls(emb.parameters(), lr=0.1, rollback=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match='sparse gradients'):
        opt.step()


def test_no_grad_params_untouched_and_unanchored():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = OLORAdamW([a, b], lr=0.1, rollback=0.5)
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    assert torch.equal(b.detach(), torch.ones(2))
    assert len(opt.state[b]) == 0


def test_scheduled_rollback_anchors_from_the_first_step():
    """A rollback warmed up from 0 by a ParamScheduler still anchors to the
    weights before the first step (the scheduler records initial_rollback).
    """
    from mmengine.optim import LinearParamScheduler
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([p], lr=0.1, rollback=0.2)
    sched = LinearParamScheduler(opt, 'rollback', start_factor=0.5,
                                 end_factor=1.0, end=2)
    group = opt.param_groups[0]
    assert group['rollback'] == 0.1 and group['initial_rollback'] == 0.2
    # A warm-up from exactly 0 (mmengine's chainable schedulers cannot start
    # at 0, a user's can): the group does not roll back yet.
    group['rollback'] = 0.0
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()  # a plain SGD step, but the anchor is taken
    assert torch.equal(opt.state[p]['anchor'], torch.zeros(2,
                                                           dtype=p.dtype))
    assert_close(p.detach(), torch.full((2, ), -0.1, dtype=p.dtype))
    group['rollback'] = 0.1
    sched.step()
    assert group['rollback'] == pytest.approx(0.2)
    p.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()  # kappa = 0.2: theta = 0.8 * theta
    assert_close(p.detach(), torch.full((2, ), -0.08, dtype=p.dtype))


@pytest.mark.parametrize('impl', list(IMPLS), ids=list(IMPLS))
@pytest.mark.parametrize('base', list(OLOR_CLASSES))
def test_step_hooks_run_once_per_step(base, impl):
    """torch wraps the step of every optimizer class it instantiates with
    the hook runner; OLOR's step calls torch's twin's step inside, so with
    the twin instantiated first (any AdamW/Adam/SGD in the process) the
    hooks must still run once per step, per-optimizer and global ones, on
    both paths (float32: OLOR's kernel where it applies; float64: torch's
    step and the review)."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    hparams = dict(CONFIGS[[b for b, _ in CONFIGS].index(base)][1])
    for dtype in (torch.float32, torch.float64):
        twin_param = torch.zeros(2, dtype=dtype, requires_grad=True)
        TORCH_CLASSES[base]([twin_param], **hparams, **IMPLS[impl])
        params = make_params(dtype)
        opt = build_olor(base, hparams, IMPLS[impl], params)
        calls = []
        handles = [
            opt.register_step_pre_hook(lambda *a: calls.append('pre')),
            opt.register_step_post_hook(lambda *a: calls.append('post')),
            register_optimizer_step_pre_hook(
                lambda *a: calls.append('global pre')),
            register_optimizer_step_post_hook(
                lambda *a: calls.append('global post')),
        ]
        try:
            gen = torch.Generator().manual_seed(0)
            for step in range(1, 4):
                set_grads(params, make_grads(params, step, gen))
                opt.step()
        finally:
            for handle in handles:
                handle.remove()
        assert sorted(calls) == sorted(
            ['pre', 'post', 'global pre', 'global post'] * 3), dtype
