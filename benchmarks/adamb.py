# Copyright (c) mmolor contributors. All rights reserved.
"""The authors' AdamB formulation of OLOR, as a torch optimizer.

The one copy: the optimizer benchmark (:mod:`benchmarks.optimizer`) times
OLOR-AdamW against it, and the tests' reference (``tests/reference.py``)
checks OLOR-AdamW against it step by step. It imports nothing of mmolor.
"""
import math

import torch
from torch.optim import Optimizer

__all__ = ['AdamBLoop']


class AdamBLoop(Optimizer):
    """The authors' AdamB formulation, as the usual per-parameter loop.

    Written from these equations (not from the authors' code): Adam's
    bias-corrected direction ``u``, then ``u <- (1 - lr * b) u + b * D``,
    ``p <- p - lr * u`` and ``D <- D - lr * u``, with ``D = p - p0`` kept as
    state (zero at the start) and ``b = rollback / lr_0``. No weight decay.

    Args:
        params (iterable): Parameters.
        lr (float): Learning rate.
        back_level (float): ``b``.
        betas (tuple[float, float]): Adam's betas.
        eps (float): Adam's epsilon.
    """

    def __init__(self,
                 params,
                 lr: float,
                 back_level: float,
                 betas=(0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(
            params, dict(lr=lr, back_level=back_level, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, b = group['lr'], group['back_level']
            beta1, beta2 = group['betas']
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p)
                    state['exp_avg_sq'] = torch.zeros_like(p)
                    state['drift'] = torch.zeros_like(p)
                state['step'] += 1
                step = state['step']
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(
                    group['eps'])
                update = exp_avg.div(denom).div_(1 - beta1**step)
                update.mul_(1 - lr * b).add_(state['drift'], alpha=b)
                p.add_(update, alpha=-lr)
                state['drift'].add_(update, alpha=-lr)
