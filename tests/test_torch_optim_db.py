# Copyright (c) mmolor contributors. All rights reserved.
"""torch's own optimizer test table as an oracle: with rollback 0, each OLOR
optimizer is its torch twin bit for bit on every CPU input torch tests
Adam, AdamW and SGD with (``optim_db``, with the for-loop / fused variants
torch adds, plus foreach)."""
import copy

import pytest
import torch
from torch.testing._internal.common_optimizers import (
    _get_optim_inputs_including_global_cliquey_kwargs, optim_db)

from mmolor.optim import OLORAdam, OLORAdamW, OLORSGD

TWINS = {torch.optim.Adam: OLORAdam, torch.optim.AdamW: OLORAdamW,
         torch.optim.SGD: OLORSGD}


def _cases():
    cases = []
    for info in optim_db:
        if info.optim_cls not in TWINS:
            continue
        inputs = _get_optim_inputs_including_global_cliquey_kwargs(
            'cpu', torch.float32, info, skip=('differentiable', ))
        for optim_input in inputs:
            kwargs = dict(optim_input.kwargs)
            cases.append((info.optim_cls, kwargs, optim_input.desc))
            if not kwargs.get('fused') and not torch.is_tensor(
                    kwargs.get('lr')):
                cases.append((info.optim_cls, dict(kwargs, foreach=True),
                              optim_input.desc))
    return cases


CASES = _cases()


def test_the_table_is_there():
    # Adam and AdamW: 5 inputs each, SGD 9; each for-loop and fused, and
    # foreach where torch takes it.
    assert len(CASES) >= 50


@pytest.mark.parametrize(
    'torch_cls,kwargs,desc',
    CASES,
    ids=[f'{c.__name__}-{d}-{sorted(k.items())}' for c, k, d in CASES])
def test_rollback_zero_is_the_torch_twin_bitwise(torch_cls, kwargs, desc):
    gen = torch.Generator().manual_seed(0)
    shapes = [(10, 5), (10, ), (3, 4, 2), ()]
    params = [
        torch.randn(s, generator=gen).requires_grad_() for s in shapes
    ]
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    olor = TWINS[torch_cls](params, **copy.deepcopy(kwargs), rollback=0.0)
    twin = torch_cls(twin_params, **copy.deepcopy(kwargs))
    for _ in range(5):
        for p, q in zip(params, twin_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        olor.step()
        twin.step()
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)
        assert olor.state[p].keys() == twin.state[q].keys()
        for key, value in twin.state[q].items():
            if value is None:
                assert olor.state[p][key] is None, key
            else:
                assert torch.equal(olor.state[p][key], value), key
