# Copyright (c) mmolor contributors. All rights reserved.
"""Slow, literal references: the test oracle for mmolor's optimizers.

Written from the equations (torch's documented AdamW / Adam / SGD updates and
OLOR's one-step review), one parameter and one line of maths at a time. It
shares no code with ``mmolor``; the authors' AdamB is
``benchmarks/adamb.py``'s, which the optimizer benchmark times.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from benchmarks.adamb import AdamBLoop


class ReferenceOLOR:
    """OLOR over plain AdamW / Adam / SGD, on cloned tensors.

    ``groups`` is a list of dicts holding ``params`` (tensors, cloned here)
    and hyper-parameters. ``step(grads, lrs)`` takes one gradient per param
    (None = no gradient this step) and the lr of each group for this step.

    Per parameter with a gradient (the paper's update, with the rollback
    following the lr as the authors' AdamB does):

        g' = g + l2sp * (theta - theta_0)                  (L2-SP)
        theta_hat = BaseStep(theta, g')
        r_t = min(1, r * lr_t / lr_0)     (r when not following lr)
        review 'olor':  kappa = r_t
        review 'spd':   kappa = r_t * ratio  if  g . (theta - theta_0) < 0
                        kappa = 0            otherwise
            ratio = clamp((|theta_hat - theta_0| - |theta - theta_0|)
                          / |theta_hat - theta_0|, 0, 1)   (0 when 0 / 0)
        theta = theta_hat - kappa * (theta_hat - theta_0)

    with ``theta_0`` the value before the parameter's first step, ``g``
    the gradient of the minimised loss (``-grad`` under ``maximize``) and
    the norms and the dot product over the whole tensor (Selective
    Projection Decay, Tian et al., NeurIPS 2024: the review acts only when
    the gradient step moves the tensor away from its anchor, and only by
    the share of the step that does).
    """

    def __init__(self, base: str, groups: List[dict]):
        assert base in ('adamw', 'adam', 'sgd')
        self.base = base
        self.groups = []
        for g in groups:
            g = dict(g)
            g['params'] = [p.detach().clone() for p in g['params']]
            self.groups.append(g)
        self.state: List[List[Dict[str, Tensor]]] = [
            [{} for _ in g['params']] for g in self.groups]

    def step(self, grads: Sequence[Sequence[Optional[Tensor]]],
             lrs: Sequence[float]) -> None:
        for gi, group in enumerate(self.groups):
            lr = lrs[gi]
            if lr > 0:  # lr_0: the first positive lr (no scheduler)
                group.setdefault('initial_lr', lr)
            for pi, theta in enumerate(group['params']):
                g = grads[gi][pi]
                if g is None:
                    continue
                state = self.state[gi][pi]
                r = group['rollback']
                alpha = group.get('l2sp', 0.0)
                if 'anchor' not in state and (r > 0 or alpha > 0):
                    state['anchor'] = theta.clone()
                if group.get('maximize', False):
                    g = -g
                drift = theta - state['anchor'] if 'anchor' in state \
                    else None
                g_base = g + alpha * drift if alpha > 0 else g.clone()
                theta_hat = self._base_step(theta, g_base, state, group, lr)
                if r > 0:
                    if group.get('rollback_follows_lr', True):
                        kappa = min(1.0, r * lr / group['initial_lr']) \
                            if lr > 0 else 0.0
                    else:
                        kappa = r
                    if group.get('review', 'olor') == 'spd':
                        kappa *= self._spd_ratio(g, drift,
                                                 theta_hat - state['anchor'])
                    theta_hat = theta_hat - kappa * (theta_hat -
                                                     state['anchor'])
                theta.copy_(theta_hat)

    @staticmethod
    def _spd_ratio(g: Tensor, drift: Tensor, new_drift: Tensor) -> float:
        """SPD's factor: 0 unless the gradient step moves the tensor away
        from its anchor, then the share of the new drift the step added."""
        if float((g * drift).sum()) >= 0:
            return 0.0
        new_norm = float(new_drift.norm())
        if new_norm == 0:
            return 0.0
        ratio = (new_norm - float(drift.norm())) / new_norm
        return min(max(ratio, 0.0), 1.0)

    def _base_step(self, theta: Tensor, g: Tensor, state: dict, group: dict,
                   lr: float) -> Tensor:
        # `g` is the gradient of the minimised loss (already negated under
        # `maximize`).
        wd = group.get('weight_decay', 0.0)
        if self.base == 'sgd':
            return self._sgd(theta, g, state, group, lr, wd)
        return self._adam(theta, g, state, group, lr, wd,
                          decoupled=self.base == 'adamw')

    @staticmethod
    def _adam(theta, g, state, group, lr, wd, decoupled):
        beta1, beta2 = group.get('betas', (0.9, 0.999))
        eps = group.get('eps', 1e-8)
        t = state['step'] = state.get('step', 0) + 1
        m = state.get('exp_avg', torch.zeros_like(theta))
        v = state.get('exp_avg_sq', torch.zeros_like(theta))
        if decoupled:
            theta = theta * (1 - lr * wd)
        elif wd != 0:
            g = g + wd * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        state['exp_avg'], state['exp_avg_sq'] = m, v
        m_hat = m / (1 - beta1**t)
        if group.get('amsgrad', False):
            vmax = torch.maximum(state.get('max_exp_avg_sq', v), v)
            state['max_exp_avg_sq'] = vmax
            v_hat = vmax / (1 - beta2**t)
        else:
            v_hat = v / (1 - beta2**t)
        return theta - lr * m_hat / (v_hat.sqrt() + eps)

    @staticmethod
    def _sgd(theta, g, state, group, lr, wd):
        momentum = group.get('momentum', 0.0)
        dampening = group.get('dampening', 0.0)
        if wd != 0:
            g = g + wd * theta
        if momentum != 0:
            if 'momentum_buffer' not in state:
                buf = g.clone()
            else:
                buf = momentum * state['momentum_buffer'] + (1 -
                                                             dampening) * g
            state['momentum_buffer'] = buf
            g = g + momentum * buf if group.get('nesterov', False) else buf
        return theta - lr * g


class ReferenceAdamB:
    """The authors' ``AdamB`` formulation (their ``OLOR/utils/AdamB.py``,
    github.com/rainbow-xiao/OLOR-AAAI-2024), with their layer-wise
    ``back_level``, on cloned tensors.

    Each rolling-back tensor keeps the accumulator ``D = theta - theta_0``
    (zero at the start) and a ``back_level`` b; with the bias-corrected Adam
    direction ``u`` (no weight decay) and lr ``eta``:

        u <- (1 - eta * b) * u + b * D
        theta <- theta - eta * u;   D <- D - eta * u

    i.e. ``theta_t = theta - eta (1 - eta b) u - eta b (theta - theta_0)``.
    The layer-wise ``b`` of tensor i out of N+1 in the group is
    ``b_min + (1 - (i / N + eps)) ** power * (b_max - b_min)`` with
    ``b = r / eta_0``. Tensors of the head (``pretrained=False``) take plain
    Adam steps (b = 0).

    The step is ``benchmarks/adamb.py``'s ``AdamBLoop`` (one parameter group
    per tensor), the loop the optimizer benchmark times: one copy of
    AdamB.
    """

    def __init__(self, params: List[Tensor], pretrained: List[bool], *,
                 b_max: float, b_min: float, power: float, betas=(0.9, 0.999),
                 eps: float = 1e-8, power_eps: float = 0.0):
        self.params = [p.detach().clone() for p in params]
        n = sum(pretrained) - 1
        self.b = []
        i = 0
        for flag in pretrained:
            if not flag:
                self.b.append(None)
                continue
            frac = i / n + power_eps if n > 0 else power_eps
            self.b.append(b_min + (1 - frac)**power * (b_max - b_min))
            i += 1
        self.optimizer = AdamBLoop(
            [dict(params=[p], back_level=b or 0.0)
             for p, b in zip(self.params, self.b)],
            lr=0.0, back_level=0.0, betas=betas, eps=eps)

    def step(self, grads: List[Tensor], lr: float) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        self.optimizer.step()


def rollback_by_depth(depth: float, max_depth: float, r_max: float,
                      r_min: float, power: float) -> float:
    """The paper's penalty decay with diversified decay rate:
    r(d) = r_min + (r_max - r_min) (1 - d / D) ** power."""
    if max_depth == 0:
        return r_max
    return r_min + (r_max - r_min) * math.pow(1 - depth / max_depth, power)


class ReferenceAdamSPD:
    """Adam with Selective Projection Decay (Tian et al., NeurIPS 2024,
    "Rethinking Weight Decay for Robust Fine-Tuning of Foundation Models"),
    written from the paper's rule, one tensor at a time:

        theta_hat = theta - lr * m_hat / (sqrt(v_hat) + eps)     (Adam)
        if g . (theta - theta_0) < 0:     (the step moves away from theta_0)
            ratio = clamp((|theta_hat - theta_0| - |theta - theta_0|)
                          / |theta_hat - theta_0|, 0, 1)
            theta_hat = theta_hat - lam * ratio * (theta_hat - theta_0)
        theta = theta_hat

    with ``theta_0`` the weights given here (the pre-trained ones) and
    ``lam`` the paper's weight decay.
    """

    def __init__(self, params: List[Tensor], *, lr: float, lam: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p.detach().clone() for p in params]
        self.pre = [p.clone() for p in self.params]
        self.lr, self.lam, self.betas, self.eps = lr, lam, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads: List[Tensor]) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for i, (theta, g) in enumerate(zip(self.params, grads)):
            self.m[i] = beta1 * self.m[i] + (1 - beta1) * g
            self.v[i] = beta2 * self.v[i] + (1 - beta2) * g * g
            m_hat = self.m[i] / (1 - beta1**self.t)
            v_hat = self.v[i] / (1 - beta2**self.t)
            new = theta - self.lr * m_hat / (v_hat.sqrt() + self.eps)
            pre = self.pre[i]
            if float((g * (theta - pre)).sum()) < 0:
                now = float((new - pre).norm())
                ratio = (now - float((theta - pre).norm())) / now
                ratio = min(max(ratio, 0.0), 1.0)
                new = new - self.lam * ratio * (new - pre)
            theta.copy_(new)
