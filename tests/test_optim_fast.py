# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's two update paths (the fused CPU kernel; torch's step and the
review) and ``anchor_dtype``, against the literal reference with the
tolerances of test_optim.py."""
import copy
import pickle

import pytest
import torch
from torch.testing import assert_close

import mmolor.optim.olor as olor_module
from mmolor.optim import OLORAdam, OLORAdamW, OLORSGD
from reference import ReferenceOLOR
from test_optim import (CONFIG_IDS, CONFIGS, OLOR_CLASSES, TORCH_CLASSES,
                        make_grads, make_params, run_against_reference,
                        set_grads, step_with_twin)
from test_optim import build_olor as build

IMPL_KWARGS = dict(
    forloop=dict(foreach=False),
    foreach=dict(foreach=True),
    default=dict(),
    fused=dict(fused=True))


@pytest.fixture
def path_log(monkeypatch):
    """Records, for each rolling-back group at each step, whether it took
    OLOR's kernel (True) or torch's step and the review (False), and
    whether all its params were contiguous."""
    log = []
    takes_kernel = olor_module._OLORMixin._takes_kernel

    def spy(self, group, k):
        on = takes_kernel(self, group, k)
        params = [p for p in group['params'] if p.grad is not None]
        if k > 0 and params:
            log.append((on, all(p.is_contiguous() for p in params)))
        return on

    monkeypatch.setattr(olor_module._OLORMixin, '_takes_kernel', spy)
    return log


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('impl', list(IMPL_KWARGS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_path_choice_and_result(base, hparams, impl, dtype, path_log):
    """One rule picks the path: float32 on the CPU takes OLOR's kernel
    unless foreach=False, for contiguous tensors (SGD's first momentum
    step, which creates the buffers, goes through torch); everything else
    takes torch's step in the mode asked for, then the review. Each path
    equals the reference."""
    run_against_reference(base, hparams, IMPL_KWARGS[impl], dtype=dtype)
    kernel = dtype == torch.float32 and impl != 'forloop'
    first = 2 if kernel and base == 'sgd' and hparams.get('momentum') else 0
    assert path_log and not any(on for on, _ in path_log[:first])
    assert all(on == (kernel and contiguous)
               for on, contiguous in path_log[first:])
    assert any(on for on, _ in path_log) == kernel


@pytest.mark.parametrize('anchor_dtype',
                         [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize('impl', ['forloop', 'foreach', 'default', 'fused'])
@pytest.mark.parametrize('base', ['adamw', 'sgd'])
def test_anchor_dtype_matches_reference(base, impl, anchor_dtype):
    """Anchors kept in another dtype: stored in it, same update on every
    path (weights that the anchor dtype represents exactly)."""
    hparams = dict(CONFIGS[[b for b, _ in CONFIGS].index(base)][1])
    impl_kwargs = dict(
        forloop=dict(foreach=False),
        foreach=dict(foreach=True),
        default=dict(),
        fused=dict(fused=True))[impl]
    run_against_reference(
        base, hparams, impl_kwargs, anchor_dtype=anchor_dtype)


def test_anchor_dtype_halves_anchor_memory():
    model = torch.nn.Linear(64, 32)
    opt = OLORAdamW(
        model.parameters(), lr=0.01, rollback=0.1, anchor_dtype='bfloat16')
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    for p in model.parameters():
        anchor = opt.state[p]['anchor']
        assert anchor.dtype == torch.bfloat16 and anchor.shape == p.shape
        assert anchor.nbytes * 2 == p.nbytes
    assert opt.param_groups[0]['anchor_dtype'] == 'bfloat16'


@pytest.mark.parametrize('cls', list(OLOR_CLASSES.values()))
def test_anchor_dtype_survives_load_state_dict_and_pickle(cls):
    """torch casts floating state to the param dtype on load; the anchors
    go back to ``anchor_dtype`` and training continues identically."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    kwargs = dict(lr=0.05, rollback=0.2, anchor_dtype=torch.bfloat16)
    if cls is OLORSGD:
        kwargs['momentum'] = 0.9
    opt = cls(model.parameters(), **kwargs)
    x = torch.randn(6, 5)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    model2 = copy.deepcopy(model)
    opt2 = cls(model2.parameters(), **dict(kwargs, anchor_dtype=None))
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]['anchor_dtype'] == 'bfloat16'
    for p, q in zip(model.parameters(), model2.parameters()):
        assert opt2.state[q]['anchor'].dtype == torch.bfloat16
        assert torch.equal(opt2.state[q]['anchor'], opt.state[p]['anchor'])
    clone = pickle.loads(pickle.dumps(opt))
    assert all(s['anchor'].dtype == torch.bfloat16
               for s in clone.state.values())
    for m, o in ((model, opt), (model2, opt2)):
        for _ in range(3):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(opt2.state[q][key], value), key


@pytest.mark.parametrize('value', ['int8', torch.int32, 3, 'nope'])
def test_bad_anchor_dtype(value):
    with pytest.raises(ValueError, match=r'Invalid anchor_dtype: '):
        OLORAdamW([torch.zeros(2, requires_grad=True)],
                  lr=0.1,
                  anchor_dtype=value)
    with pytest.raises(
            ValueError, match=r'Invalid anchor_dtype of param group 0'):
        OLORAdamW([
            dict(
                params=[torch.zeros(2, requires_grad=True)],
                anchor_dtype=value)
        ],
                  lr=0.1)


def test_float8_anchor_dtype_is_refused_at_build():
    """torch cannot combine float8 with other dtypes (the review would fail
    at the first step): refused when the group is added, and not kept."""
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"anchor_dtype of param group 0: "
                       r"'float8_e4m3fn'.*torch\.float32"):
        OLORAdamW([p], lr=0.1, rollback=0.1, anchor_dtype='float8_e4m3fn')
    opt = OLORAdamW([p], lr=0.1, rollback=0.1)
    with pytest.raises(ValueError, match=r'anchor_dtype of param group 1'):
        opt.add_param_group(
            dict(
                params=[torch.zeros(3, requires_grad=True)],
                anchor_dtype=torch.float8_e5m2))
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize('impl', ['foreach', 'default', 'fused'])
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_rollback_zero_groups_stay_torch_bitwise(base, hparams, impl):
    """Groups that do not roll back are torch's optimizer bit for bit, also
    when other groups of the same optimizer take a fast path."""
    params = make_params(torch.float32)
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    kwargs = IMPL_KWARGS[impl]
    opt = build(base, hparams, kwargs, params)
    twin_groups = [dict(params=twin_params[3:5], lr=opt.param_groups[2]['lr'])]
    twin = TORCH_CLASSES[base](twin_groups, **hparams, **kwargs)
    step_with_twin(opt, twin, params, twin_params, 7, range(3, 5))


def test_sgd_fast_path_leaves_grads_alone():
    p = torch.randn(6, dtype=torch.float64, requires_grad=True)
    opt = OLORSGD([p],
                  lr=0.1,
                  momentum=0.9,
                  nesterov=True,
                  weight_decay=0.1,
                  rollback=0.2,
                  foreach=True)
    for _ in range(3):
        p.grad = torch.ones(6, dtype=torch.float64)
        opt.step()
        assert torch.equal(p.grad, torch.ones(6, dtype=torch.float64))


def test_per_parameter_groups_are_batched(monkeypatch):
    """mmengine's one-group-per-parameter layout: the fused kernel runs once
    per set of equal hyper-parameters, not once per group. Per-group lr and
    rollback still apply.
    """
    calls = []
    kernel = olor_module.cpu_kernel()

    class Spy:

        def olor_adam_(self, params, *args):
            calls.append(len(params))
            return kernel.olor_adam_(params, *args)

    monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: Spy())
    kwargs = dict(fused=True)
    params = make_params(torch.float32)[:6]
    expected = [2, 2, 2]  # (lr, rollback) pairs shared by 2, 2, 2
    groups = [
        dict(params=[p], rollback=0.1 * (1 + i % 3), lr=0.01 * (1 + i % 3))
        for i, p in enumerate(params)
    ]
    opt = OLORAdam(groups, lr=0.01, **kwargs)
    ref = ReferenceOLOR(
        'adam', [dict(g, params=g['params']) for g in copy.deepcopy(groups)])
    gen = torch.Generator().manual_seed(5)
    for step in range(1, 5):
        grads = [
            torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params
        ]
        set_grads(params, grads)
        opt.step()
        ref.step([[g] for g in grads], [g['lr'] for g in opt.param_groups])
    assert calls == expected * 4
    for p, g in zip(params, ref.groups):
        assert_close(p.detach(), g['params'][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('cls', [OLORAdamW, OLORSGD])
def test_cuda_fast_path_matches_cpu(cls):
    results = []
    for device in ('cpu', 'cuda'):
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 32).double().to(device)
        opt = cls(
            model.parameters(),
            lr=0.01,
            rollback=0.1,
            foreach=True,
            **(dict(momentum=0.9) if cls is OLORSGD else {}))
        x = torch.randn(8, 64, dtype=torch.float64).to(device)
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results):
        assert_close(a, b)


def test_adamb_loop_is_olor_adamw_without_weight_decay():
    """The authors' AdamB (benchmarks/adamb.py: the loop the optimizer
    benchmark times, and the step of tests/reference.py's ReferenceAdamB)
    equals OLOR-AdamW with weight decay 0 and r = b * lr."""
    from benchmarks.adamb import AdamBLoop
    lr, r = 0.01, 0.05
    params = make_params()
    olor_params = [p.detach().clone().requires_grad_() for p in params]
    loop = AdamBLoop(params, lr=lr, back_level=r / lr)
    olor = OLORAdamW(olor_params, lr=lr, weight_decay=0.0, rollback=r)
    gen = torch.Generator().manual_seed(6)
    for _ in range(10):
        grads = [
            torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params
        ]
        set_grads(params, grads)
        set_grads(olor_params, grads)
        loop.step()
        olor.step()
    for p, o in zip(params, olor_params):
        assert_close(o.detach(), p.detach(), rtol=1e-10, atol=1e-13)


@pytest.fixture
def kernel_calls(monkeypatch):
    """OLOR's fused CPU kernel, built here, with its calls counted."""
    from mmolor.optim import cpu_kernel, cpu_kernel_error
    kernel = cpu_kernel()
    assert kernel is not None, \
        f'fused CPU kernel unavailable: {cpu_kernel_error()}'
    calls = []

    class Counting:

        def __getattr__(self, name):
            fn = getattr(kernel, name)
            return lambda *args: (calls.append(name), fn(*args))[1]

    monkeypatch.setattr(olor_module, 'cpu_kernel', lambda: Counting())
    return calls


@pytest.mark.parametrize('anchor_dtype', [None, torch.bfloat16])
@pytest.mark.parametrize('impl', ['default', 'fused', 'foreach'])
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_cpu_kernel_matches_reference(base, hparams, impl, anchor_dtype,
                                      kernel_calls):
    """OLOR's fused CPU kernel (float32 weights; it takes foreach=True
    groups too) equals the float32 reference with the float32 tolerances,
    and really ran."""
    impl_kwargs = dict(
        default=dict(), fused=dict(fused=True),
        foreach=dict(foreach=True))[impl]
    run_against_reference(
        base,
        hparams,
        impl_kwargs,
        dtype=torch.float32,
        anchor_dtype=anchor_dtype)
    expected = 'olor_sgd_' if base == 'sgd' else 'olor_adam_'
    assert kernel_calls and set(kernel_calls) == {expected}


def test_cpu_kernel_leaves_other_dtypes_to_torch(kernel_calls):
    """float64 weights take torch's fused kernel and the review."""
    run_against_reference('adamw', dict(lr=0.01), dict())
    assert kernel_calls == []


def test_cpu_kernel_rejects_bad_input_before_writing():
    from mmolor.optim import cpu_kernel
    kernel = cpu_kernel()
    p, g, buf = torch.ones(4), torch.ones(4), torch.zeros(4)
    anchors = [torch.zeros(4), torch.zeros(3)]  # second one: wrong size
    params = [p, p.clone()]
    with pytest.raises(RuntimeError, match=r'anchors\[1\]'):
        kernel.olor_sgd_(params, [g, g], [buf, buf.clone()], anchors, 0.0,
                         0.9, 0.0, False, 0.1, 0.5, False, 0.1, True)
    assert torch.equal(params[0], torch.ones(4))
    assert torch.equal(buf, torch.zeros(4))


def test_cpu_kernel_leaves_float16_anchors_to_torch(kernel_calls):
    """float16 anchors: torch's step and the review, same numbers."""
    opt, _ = run_against_reference(
        'adamw', dict(lr=0.01, weight_decay=0.1), dict(),
        dtype=torch.float32, anchor_dtype=torch.float16)
    assert kernel_calls == []


def test_non_contiguous_state_takes_torch_path(kernel_calls, path_log):
    """A non-contiguous moment (e.g. from an odd checkpoint): that step goes
    through torch's step and the review, and it is the step the reference
    takes (torch keeps the layout, so later steps stay there); the kernel
    took the step before."""
    torch.manual_seed(0)
    p = torch.randn(4, 3, requires_grad=True)
    twin = p.detach().clone().requires_grad_()
    opt = OLORAdamW([p], lr=0.01, rollback=0.2)
    ref = OLORAdamW([twin], lr=0.01, rollback=0.2, foreach=False)
    for step in range(3):
        grad = torch.randn(4, 3)
        p.grad, twin.grad = grad.clone(), grad.clone()
        if step == 1:
            state = opt.state[p]
            state['exp_avg'] = state['exp_avg'].t().contiguous().t()
            assert not state['exp_avg'].is_contiguous()
        opt.step()
        ref.step()
        assert_close(p, twin)
        assert float(opt.state[p]['step']) == step + 1
    assert [on for on, _ in path_log[:2]] == [True, False]
    assert kernel_calls == ['olor_adam_']
