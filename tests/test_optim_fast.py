# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR's fast paths (blocked multi-tensor, fused CPU kernel) and
``anchor_dtype``, against the literal reference with the tolerances of
test_optim.py."""
import copy
import pickle

import pytest
import torch
from torch.testing import assert_close

import mmolor.optim._functional as functional
import mmolor.optim.olor as olor_module
from mmolor.optim import OLORAdam, OLORAdamW, OLORSGD
from mmolor.optim._helpers import iter_blocks
from reference import ReferenceOLOR
from test_optim import (CONFIG_IDS, CONFIGS, OLOR_CLASSES, TORCH_CLASSES,
                        make_grads, make_params, run_against_reference,
                        set_grads)
from test_optim import build_olor as build

# How each fast path is asked for. 'blocked' shrinks the CPU blocks so that
# tensors are cut into chunks and several tensors share a block.
FAST_IMPLS = dict(
    foreach=dict(foreach=True),
    default=dict(),
    blocked=dict(foreach=True),
)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(functional, 'CPU_BLOCK_NUMEL', 5)


@pytest.fixture
def path_log(monkeypatch):
    """Records which path each rolling-back group took at each step, and
    whether all its tensors were contiguous."""
    log = []
    fast_path = olor_module._OLORMixin._fast_path

    def spy(self, group, kappa):
        path = fast_path(self, group, kappa)
        params = [p for p in group['params'] if p.grad is not None]
        if kappa > 0 and params:
            log.append((path, all(p.is_contiguous() for p in params)))
        return path

    monkeypatch.setattr(olor_module._OLORMixin, '_fast_path', spy)
    return log


@pytest.mark.parametrize('impl', list(FAST_IMPLS))
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_fast_paths_match_reference(base, hparams, impl, request, path_log):
    """Each fast path equals the reference after every step, and is the
    path the rolling-back groups really took."""
    if impl == 'blocked':
        request.getfixturevalue('small_blocks')
    opt, _ = run_against_reference(base, hparams, FAST_IMPLS[impl])
    # torch >= 2.4 has fused CPU kernels: the fused path really ran.
    assert not getattr(opt, '_fused_failed', False)

    def expected(contiguous):
        # foreach=None on the CPU: torch's fused kernel where it can read
        # the tensors, OLOR's multi-tensor update elsewhere.
        return 'fused' if impl == 'default' and contiguous else 'foreach'

    # SGD with momentum takes its first step (which creates the momentum
    # buffers) through torch.
    first = 2 if base == 'sgd' and hparams.get('momentum') else 0
    assert all(path in (None, expected(c)) for path, c in path_log[:first])
    assert all(path == expected(c) for path, c in path_log[first:])
    assert {
        path
        for path, _ in path_log[first:]
    } == ({'fused', 'foreach'} if impl == 'default' else {expected(True)})


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


def test_compiled_is_gone():
    """``compiled=`` (the torch.compile'd update) was removed: slower than
    the fused CPU kernel in every measurement. Asking for it says so."""
    with pytest.raises(TypeError, match=r'no longer take `compiled`'):
        OLORSGD([torch.zeros(2, requires_grad=True)], lr=0.1, compiled=True)


def test_iter_blocks_covers_every_element_once():
    shapes = [(300, ), (7, 5), (2, ), (1000, ), ()]
    a = [torch.zeros(s) for s in shapes]
    b = [torch.zeros(s) for s in shapes]
    a.append(torch.zeros(40, 30).t())  # non-contiguous: never cut
    b.append(torch.zeros(30, 40))
    seen = []
    for (xs, ys), (scal, ) in iter_blocks([a, b], [list(range(6))], 128):
        assert sum(x.numel() for x in xs) < 128 + 1200
        for x, y, s in zip(xs, ys, scal):
            assert x.shape == y.shape
            x.add_(1)
            y.add_(s + 1)
            seen.append(s)
    assert all(torch.equal(x, torch.ones_like(x)) for x in a)
    assert all(
        torch.equal(y, torch.full_like(y, i + 1)) for i, y in enumerate(b))
    # The 300- and 1000-element tensors were cut into chunks.
    assert seen.count(0) == 3 and seen.count(3) == 8
    assert seen.count(5) == 1


@pytest.mark.parametrize('base', list(OLOR_CLASSES))
def test_blocked_matches_forloop(base, small_blocks):
    """Blocked multi-tensor update and torch's for-loop + review agree to
    rounding (float64), as test_optim.test_foreach_matches_forloop."""
    hparams = dict(CONFIGS[[b for b, _ in CONFIGS].index(base)][1])
    runs = []
    for impl in (dict(foreach=False), dict(foreach=True)):
        params = make_params()
        opt = build(base, hparams, impl, params)
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


@pytest.mark.parametrize('impl', ['foreach', 'default'])
@pytest.mark.parametrize('base,hparams', CONFIGS, ids=CONFIG_IDS)
def test_rollback_zero_groups_stay_torch_bitwise(base, hparams, impl):
    """Groups that do not roll back are torch's optimizer bit for bit, also
    when other groups of the same optimizer take a fast path."""
    params = make_params(torch.float32)
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    kwargs = dict(foreach=dict(foreach=True), default=dict())[impl]
    opt = build(base, hparams, kwargs, params)
    twin_groups = [dict(params=twin_params[3:5], lr=opt.param_groups[2]['lr'])]
    twin = TORCH_CLASSES[base](twin_groups, **hparams,
                               **(kwargs if impl == 'foreach' else {}))
    gen = torch.Generator().manual_seed(2)
    for step in range(1, 8):
        grads = make_grads(params, step, gen)
        set_grads(params, grads)
        set_grads(twin_params, grads)
        opt.step()
        twin.step()
        for p, q in zip(params[3:5], twin_params[3:5]):
            assert torch.equal(p, q)
            for key, value in twin.state[q].items():
                assert torch.equal(opt.state[p][key], value)


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


@pytest.mark.parametrize('impl', ['foreach', 'fused'])
def test_per_parameter_groups_are_batched(impl, monkeypatch):
    """mmengine's one-group-per-parameter layout: the multi-tensor update
    and the fused kernel run once per set of equal hyper-parameters, not
    once per group. Per-group lr and rollback still apply.
    """
    calls = []
    name = f'_{"multi_tensor" if impl == "foreach" else "fused"}_kernel'
    kernel = getattr(olor_module._OLORAdamMixin, name)

    def spy_kernel(*args, **kwargs):
        calls.append(len(args[0]))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(olor_module._OLORAdamMixin, name,
                        staticmethod(spy_kernel))
    if impl == 'foreach':
        kwargs = dict(foreach=True)
        params = make_params()
        expected = [3, 2, 2]  # (lr, rollback) pairs shared by 3, 2, 2
    else:  # OLOR's kernel: float32, contiguous
        kwargs = dict(fused=True)
        params = make_params(torch.float32)[:6]
        expected = [2, 2, 2]
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


def test_benchmark_adamb_loop_is_the_authors_formulation():
    """The AdamB loop the benchmark times against equals the reference
    AdamB (tests/reference.py), and so OLOR-AdamW with weight decay 0."""
    import importlib.util
    import os.path as osp
    from reference import ReferenceAdamB
    path = osp.join(
        osp.dirname(__file__), '..', 'tools', 'analysis_tools',
        'benchmark_optimizer.py')
    spec = importlib.util.spec_from_file_location('benchmark_optimizer', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    lr, r = 0.01, 0.05
    params = make_params()
    olor_params = [p.detach().clone().requires_grad_() for p in params]
    loop = tool.AdamBLoop(params, lr=lr, back_level=r / lr)
    olor = OLORAdamW(olor_params, lr=lr, weight_decay=0.0, rollback=r)
    ref = ReferenceAdamB(
        params, [True] * len(params), b_max=r / lr, b_min=r / lr, power=1.0)
    gen = torch.Generator().manual_seed(6)
    for _ in range(10):
        grads = [
            torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params
        ]
        set_grads(params, grads)
        set_grads(olor_params, grads)
        loop.step()
        olor.step()
        ref.step(grads, lr)
    for p, q, o in zip(params, ref.params, olor_params):
        assert_close(p.detach(), q, rtol=1e-10, atol=1e-13)
        assert_close(o.detach(), q, rtol=1e-10, atol=1e-13)


def test_default_cpu_path_falls_back_without_fused_kernel(monkeypatch):
    """A torch without fused CPU kernels: the multi-tensor update takes
    over, with the same result and the step counted once."""

    def missing(*args, **kwargs):
        raise RuntimeError('no CPU kernel')

    results = []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(torch, '_fused_adamw_', missing)
        params = make_params()[:2]
        opt = OLORAdamW(params, lr=0.01, rollback=0.2)
        gen = torch.Generator().manual_seed(7)
        for _ in range(3):
            set_grads(params, [
                torch.randn(p.shape, generator=gen, dtype=p.dtype)
                for p in params
            ])
            opt.step()
        assert getattr(opt, '_fused_failed', False) == patch
        assert all(float(opt.state[p]['step']) == 3 for p in params)
        results.append(params)
    for a, b in zip(*results):
        assert_close(a, b, rtol=0, atol=1e-14)


@pytest.fixture
def kernel_calls(monkeypatch):
    """OLOR's fused CPU kernel, built here, with its calls counted."""
    from mmolor.optim import _cpu_kernel
    kernel = _cpu_kernel.cpu_kernel()
    assert kernel is not None, \
        f'fused CPU kernel unavailable: {_cpu_kernel.cpu_kernel_error()}'
    calls = []

    class Counting:

        def __getattr__(self, name):
            fn = getattr(kernel, name)
            return lambda *args: (calls.append(name), fn(*args))[1]

    monkeypatch.setattr(functional, 'cpu_kernel', lambda: Counting())
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
    from mmolor.optim._cpu_kernel import cpu_kernel
    kernel = cpu_kernel()
    p, g, buf = torch.ones(4), torch.ones(4), torch.zeros(4)
    anchors = [torch.zeros(4), torch.zeros(3)]  # second one: wrong size
    params = [p, p.clone()]
    with pytest.raises(RuntimeError, match=r'anchors\[1\]'):
        kernel.olor_sgd_(params, [g, g], [buf, buf.clone()], anchors, 0.0,
                         0.9, 0.0, False, -0.1, 0.5, False)
    assert torch.equal(params[0], torch.ones(4))
    assert torch.equal(buf, torch.zeros(4))


def test_cpu_kernel_can_be_switched_off(monkeypatch):
    """MMOLOR_CPU_KERNEL=0: no build, and the fused path falls back to
    torch's fused step and the review (still equal to the reference)."""
    from mmolor.optim import _cpu_kernel
    monkeypatch.setattr(_cpu_kernel, '_module', None)
    monkeypatch.setattr(_cpu_kernel, '_error', None)
    monkeypatch.setenv('MMOLOR_CPU_KERNEL', '0')
    assert _cpu_kernel.cpu_kernel() is None
    assert 'MMOLOR_CPU_KERNEL=0' in _cpu_kernel.cpu_kernel_error()
    run_against_reference(
        'adamw', dict(lr=0.01, weight_decay=0.1), dict(fused=True),
        dtype=torch.float32)


def test_cpu_kernel_leaves_float16_anchors_to_torch(kernel_calls):
    """float16 anchors: torch's fused step and the review, same numbers."""
    opt, _ = run_against_reference(
        'adamw', dict(lr=0.01, weight_decay=0.1), dict(),
        dtype=torch.float32, anchor_dtype=torch.float16)
    assert kernel_calls == []
    assert not getattr(opt, '_fused_failed', False)


def test_cpu_kernel_refusing_odd_state_falls_back(kernel_calls):
    """A non-contiguous moment (e.g. from an odd checkpoint): the kernel
    refuses before writing, the step is taken by the multi-tensor update,
    and it is the step the reference takes."""
    torch.manual_seed(0)
    p = torch.randn(4, 3, requires_grad=True)
    twin = p.detach().clone().requires_grad_()
    opt = OLORAdamW([p], lr=0.01, rollback=0.2)
    ref = OLORAdamW([twin], lr=0.01, rollback=0.2, foreach=True)
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
    assert opt._fused_failed
