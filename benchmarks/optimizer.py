# Copyright (c) mmolor contributors. All rights reserved.
"""The optimizer benchmark: OLOR's optimizers timed against their torch
twins (and the authors' AdamB loop) on the parameters of real backbones,
the drift of bfloat16 anchors and a small Mask R-CNN's training
iterations.

``tools/analysis_tools/benchmark_optimizer.py`` is its command line; what
each row and column means is said there. The functions take its parsed
arguments.
"""
import copy
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.optim import SGD, AdamW, Optimizer

import mmolor  # noqa: F401  registries and version checks
from mmolor.optim import OLORAdamW, OLORSGD
from mmolor.version import require, require_scope
from .adamb import AdamBLoop

__all__ = [
    'BACKBONES', 'AdamBLoop', 'backbone_params', 'state_bytes_per_param',
    'time_pair', 'pairs', 'bench_backbones', 'print_table', 'anchor_drift',
    'e2e', 'describe_machine'
]

BACKBONES = {
    'resnet50': ('mmdet', dict(type='ResNet', depth=50)),
    'swin-t': ('mmdet',
               dict(
                   type='SwinTransformer',
                   embed_dims=96,
                   depths=(2, 2, 6, 2),
                   num_heads=(3, 6, 12, 24),
                   window_size=7)),
    'vit-b': ('mmseg',
              dict(
                  type='VisionTransformer',
                  img_size=(224, 224),
                  patch_size=16,
                  embed_dims=768,
                  num_layers=12,
                  num_heads=12)),
}
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
# Rollback 0.01 at the initial lr, so kappa = rollback * lr_t / lr_0 = 0.01
# at every step.
ROLLBACK = 0.01
# L2-SP's weight in the `l2sp` row (no review there).
L2SP = 0.01


def backbone_params(name: str, device: str) -> List[nn.Parameter]:
    """The trainable parameters of a backbone built from its registry."""
    scope, cfg = BACKBONES[name]
    require_scope(scope, f'the {name} backbone')
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    params = [p for p in model.to(device).parameters() if p.requires_grad]
    gen = torch.Generator(device).manual_seed(1)
    for p in params:
        p.grad = torch.randn(
            p.shape, generator=gen, device=device, dtype=p.dtype) * 1e-3
    return params


def state_bytes_per_param(opt: Optimizer, params: Sequence[Tensor]) -> float:
    """Bytes of all tensors in ``opt.state``, per parameter element."""
    total = 0
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total / sum(p.numel() for p in params)


def sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def time_pair(make_twin: Callable, make_olor: Callable, params: List[Tensor],
              steps: int, warmup: int, device: str) -> Dict:
    """Interleaved rounds of ``twin.step()`` and ``olor.step()``."""
    twin, olor = make_twin(params), make_olor(params)
    for _ in range(warmup):
        for opt in (twin, olor):
            opt.step()
    sync(device)
    times: Tuple[List[float], List[float]] = ([], [])
    for i in range(steps):
        order = ((0, twin), (1, olor)) if i % 2 == 0 else ((1, olor), (0,
                                                                       twin))
        for k, opt in order:
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            times[k].append(time.perf_counter() - start)
    ratios = sorted(b / a for a, b in zip(*times))
    result = dict(
        twin_ms=1e3 * statistics.median(times[0]),
        olor_ms=1e3 * statistics.median(times[1]),
        ratio=statistics.median(ratios),
        q1=ratios[len(ratios) // 4],
        q3=ratios[(3 * len(ratios)) // 4],
        twin_bytes=state_bytes_per_param(twin, params),
        olor_bytes=state_bytes_per_param(olor, params))
    del twin, olor
    return result


def unreviewed(opt: Optimizer) -> Optimizer:
    """``opt`` (review 'spd') after one step, its anchors moved to
    ``theta - 100 * grad``: the gradients (fixed here) then point away from
    the anchors, so no step moves a tensor away from them and the review
    'spd' leaves every tensor as the step made it."""
    opt.step()
    for group in opt.param_groups:
        for p in group['params']:
            opt.state[p]['anchor'].copy_(p - 100 * p.grad)
    return opt


def pairs(args) -> List[Tuple[str, str, str, Callable, Callable]]:
    """(optimizer, mode, twin name, make twin, make OLOR) to time."""
    olor_adamw = dict(ADAMW, rollback=ROLLBACK)
    olor_sgd = dict(SGD_ARGS, rollback=ROLLBACK)
    modes = [('foreach', dict(foreach=True)), ('fused', dict(fused=True))]
    if not args.no_forloop:
        modes.insert(0, ('for-loop', dict(foreach=False)))
    out = []
    for mode, flags in modes:
        out.append(('AdamW', mode, 'torch AdamW',
                    lambda p, f=flags: AdamW(p, **ADAMW, **f),
                    lambda p, f=flags: OLORAdamW(p, **olor_adamw, **f)))
    out.append(
        ('AdamW', 'default', 'torch AdamW default',
         lambda p: AdamW(p, **ADAMW), lambda p: OLORAdamW(p, **olor_adamw)))
    out.append(('AdamW', 'default, bf16 anchor', 'torch AdamW default',
                lambda p: AdamW(p, **ADAMW),
                lambda p: OLORAdamW(p, **olor_adamw, anchor_dtype='bfloat16')))
    # The review 'spd' (two passes on the kernel) and L2-SP without a
    # review, against torch's fastest step; 'spd' on torch's path too.
    spd_modes = [('fused', dict(fused=True))]
    if not args.no_forloop:
        spd_modes.insert(0, ('for-loop', dict(foreach=False)))
    for mode, flags in spd_modes:
        out.append(('AdamW', f'{mode}, spd', f'torch AdamW {mode}',
                    lambda p, f=flags: AdamW(p, **ADAMW, **f),
                    lambda p, f=flags: OLORAdamW(
                        p, **olor_adamw, review='spd', **f)))
    # Its other bound: no tensor reviewed (the anchors put where every
    # step moves toward them), i.e. the step pass alone.
    out.append(('AdamW', 'fused, spd, none reviewed', 'torch AdamW fused',
                lambda p: AdamW(p, **ADAMW, fused=True),
                lambda p: unreviewed(
                    OLORAdamW(p, **olor_adamw, review='spd', fused=True))))
    out.append(('AdamW', 'fused, l2sp', 'torch AdamW fused',
                lambda p: AdamW(p, **ADAMW, fused=True),
                lambda p: OLORAdamW(p, **ADAMW, l2sp=L2SP, fused=True)))
    for mode, flags in modes:
        out.append(('SGD', mode, 'torch SGD',
                    lambda p, f=flags: SGD(p, **SGD_ARGS, **f),
                    lambda p, f=flags: OLORSGD(p, **olor_sgd, **f)))
    out.append(('SGD', 'fused, spd', 'torch SGD fused',
                lambda p: SGD(p, **SGD_ARGS, fused=True),
                lambda p: OLORSGD(p, **olor_sgd, review='spd', fused=True)))
    # OLOR-AdamW against the authors' formulation (weight decay 0 in both,
    # as AdamB has none).
    for mode, flags in [('default', {}), ('fused', dict(fused=True))]:
        out.append(('AdamW', f'{mode} vs AdamB loop', 'AdamB per-param loop',
                    lambda p: AdamBLoop(
                        p, lr=ADAMW['lr'], back_level=ROLLBACK / ADAMW['lr']),
                    lambda p, f=flags: OLORAdamW(
                        p, **dict(olor_adamw, weight_decay=0.0), **f)))
    return out


def bench_backbones(args) -> List[Dict]:
    rows = []
    for name in args.backbones:
        params = backbone_params(name, args.device)
        numel = sum(p.numel() for p in params)
        print(
            f'\n{name}: {numel / 1e6:.1f} M parameters in {len(params)} '
            'tensors',
            flush=True)
        for optimizer, mode, twin_name, make_twin, make_olor in pairs(args):
            try:
                res = time_pair(make_twin, make_olor, params, args.steps,
                                args.warmup, args.device)
            except RuntimeError as e:  # e.g. no fused kernel on this device
                print(f'  {optimizer} {mode}: skipped ({e})')
                continue
            res.update(
                backbone=name,
                optimizer=optimizer,
                mode=mode,
                twin=twin_name,
                threads=torch.get_num_threads())
            rows.append(res)
            print(
                f'  {optimizer:5s} {mode:25s} {twin_name:22s} '
                f'{res["twin_ms"]:8.1f} ms  OLOR {res["olor_ms"]:8.1f} ms  '
                f'x{res["ratio"]:.3f} [{res["q1"]:.3f}-{res["q3"]:.3f}]',
                flush=True)
        del params
    return rows


def print_table(rows: List[Dict], threads_note: str) -> None:
    print(f'\nThreads: {threads_note}')
    print('\n| backbone | optimizer | mode | threads | twin | twin ms | '
          'OLOR ms | OLOR / twin (median [q1-q3]) | '
          'state B/param twin -> OLOR |')
    print('|---|---|---|---:|---|---:|---:|---:|---:|')
    for r in rows:
        ratio = f'{r["ratio"]:.3f} [{r["q1"]:.3f}-{r["q3"]:.3f}]'
        if r['twin'].startswith('AdamB'):
            ratio += f' ({1 / r["ratio"]:.1f}x faster)'
        print(f'| {r["backbone"]} | {r["optimizer"]} | {r["mode"]} | '
              f'{r["threads"]} | {r["twin"]} | {r["twin_ms"]:.1f} | '
              f'{r["olor_ms"]:.1f} | {ratio} | '
              f'{r["twin_bytes"]:.2f} -> {r["olor_bytes"]:.2f} |')


def anchor_drift(args) -> None:
    """bfloat16- against float32-anchored OLOR-AdamW on the same gradients.

    The gradients come from a quadratic pull toward a random target near
    the initial weights plus noise, so they depend on the weights (as real
    ones do) and both runs see the same function.
    """
    name = args.backbones[0]
    params = backbone_params(name, args.device)
    gen = torch.Generator(args.device).manual_seed(2)
    start = [p.detach().clone() for p in params]
    scale = [
        p.detach().float().std().item() if p.numel() > 1 else 1.0
        for p in params
    ]
    target = [
        s + 0.05 * c * torch.randn(s.shape, generator=gen, device=args.device)
        for s, c in zip(start, scale)
    ]
    noise = [[
        torch.randn(s.shape, generator=gen, device=args.device) for s in start
    ] for _ in range(4)]
    runs = {}
    for dtype in (None, 'bfloat16'):
        weights = [s.clone().requires_grad_() for s in start]
        opt = OLORAdamW(
            weights, **ADAMW, rollback=ROLLBACK, anchor_dtype=dtype)
        for t in range(args.drift_steps):
            grads = torch._foreach_sub([w.detach() for w in weights], target)
            torch._foreach_add_(grads, noise[t % 4])
            for w, g in zip(weights, grads):
                w.grad = g
            opt.step()
        runs[dtype] = (weights, opt)
    (w32, opt32), (w16, opt16) = runs[None], runs['bfloat16']

    def norm(tensors):
        return math.sqrt(
            sum(float(t.double().square().sum()) for t in tensors))

    moved = norm([a.detach() - s for a, s in zip(w32, start)])
    gap = norm([a.detach() - b.detach() for a, b in zip(w32, w16)])
    weight = norm(start)
    rounding = norm(
        [opt16.state[b]['anchor'].float() - s for b, s in zip(w16, start)])
    # The tensor that moved most, relative to its own size (tensors that
    # start at zero, such as zero-initialised norm weights, have exact
    # anchors and are left out).
    worst = max(
        norm([a.detach() - b.detach()]) / norm([s])
        for a, b, s in zip(w32, w16, start) if norm([s]) > 0)
    print(f'\nAnchor dtype drift ({name}, OLOR-AdamW lr {ADAMW["lr"]}, '
          f'kappa {ROLLBACK}, {args.drift_steps} steps):')
    print(f'  ||theta_bf16 - theta_fp32|| / ||theta_fp32 - theta_0|| = '
          f'{gap / moved:.2e}')
    print(f'  ||theta_bf16 - theta_fp32|| / ||theta_0||              = '
          f'{gap / weight:.2e}')
    print(f'  the same, for the tensor where it is largest           = '
          f'{worst:.2e}')
    print(f'  ||bf16(theta_0) - theta_0|| / ||theta_0|| (rounding)   = '
          f'{rounding / weight:.2e}')
    print(f'  state B/param: fp32 anchor '
          f'{state_bytes_per_param(opt32, w32):.2f}, bf16 anchor '
          f'{state_bytes_per_param(opt16, w16):.2f}')


def e2e(args) -> None:
    """Training iterations of a small Mask R-CNN: AdamW, OLOR-AdamW as
    published and with the review 'spd', interleaved."""
    require('det', '--e2e (a Mask R-CNN)')
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from .datasets import write_coco
    register_all_modules()
    cfg = get_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    root = tempfile.mkdtemp(prefix='olor_bench_')
    write_coco(
        root, dict(train=8, val=1), image_size=(args.e2e_size, args.e2e_size))
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False, batch_size=2)
    loader_cfg.dataset.update(data_root=root + '/')
    loader_cfg.dataset.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(
            type='Resize',
            scale=(args.e2e_size, args.e2e_size),
            keep_ratio=True),
        dict(type='PackDetInputs')
    ]
    # The batches are loaded once, before timing; the files can go.
    batches = list(Runner.build_dataloader(loader_cfg, seed=0))
    shutil.rmtree(root)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(args.device)
    model.init_weights()
    # AdamW; OLOR-AdamW as published (r_max 0.01 following the lr); SPD's
    # review at strength 1 over the backbone, as the ADE20K configs ship.
    rollbacks = [
        None,
        dict(max=0.01, min=0.0, power=1.0, layer='block',
             scope=['backbone']),
        dict(max=1.0, min=1.0, power=0.0, scope=['backbone'], review='spd'),
    ]
    labels = ['AdamW', 'OLOR-AdamW', "OLOR-AdamW review='spd'"]
    models, wrappers = [], []
    for rollback in rollbacks:
        models.append(copy.deepcopy(model))
        if rollback is None:
            wrapper_cfg = dict(
                optimizer=dict(type='AdamW', **ADAMW),
                paramwise_cfg=dict(norm_decay_mult=0.0))
        else:
            wrapper_cfg = dict(
                constructor='OLOROptimWrapperConstructor',
                optimizer=dict(
                    type='OLORAdamW',
                    rollback_follows_lr=rollback.get('review') != 'spd',
                    **ADAMW),
                paramwise_cfg=dict(rollback=rollback, norm_decay_mult=0.0))
        wrappers.append(build_optim_wrapper(models[-1], wrapper_cfg))
    del model
    n = len(wrappers)
    step_times: List[List[float]] = [[] for _ in range(n)]
    for k, ow in enumerate(wrappers):
        step = ow.optimizer.step

        def timed(*a, _step=step, _k=k, **kw):
            sync(args.device)
            start = time.perf_counter()
            out = _step(*a, **kw)
            sync(args.device)
            step_times[_k].append(time.perf_counter() - start)
            return out

        ow.optimizer.step = timed
    iters: List[List[float]] = [[] for _ in range(n)]
    total = args.e2e_warmup + args.e2e_iters
    for i in range(total):
        # A rotating order: each optimizer runs first, middle and last.
        for k in [(i + j) % n for j in range(n)]:
            torch.manual_seed(i)
            models[k].train()
            sync(args.device)
            start = time.perf_counter()
            models[k].train_step(batches[i % len(batches)], wrappers[k])
            sync(args.device)
            if i >= args.e2e_warmup:
                iters[k].append(time.perf_counter() - start)
    for k in range(n):
        del step_times[k][:args.e2e_warmup]
    print(f'\nMask R-CNN R-50-FPN, {args.e2e_size}px images, batch 2, '
          f'{args.e2e_iters} interleaved iterations after '
          f'{args.e2e_warmup} warm-up (ratio: to AdamW, median '
          '[q1-q3] of the per-iteration ratios):')
    for k in range(n):
        line = (f'  {labels[k]}: iteration {statistics.median(iters[k]):.3f}'
                f' s, optimizer step '
                f'{1e3 * statistics.median(step_times[k]):.1f} ms')
        if k:
            ratios = sorted(b / a for a, b in zip(iters[0], iters[k]))
            line += (f'; iteration ratio {statistics.median(ratios):.3f} '
                     f'[{ratios[len(ratios) // 4]:.3f}-'
                     f'{ratios[(3 * len(ratios)) // 4]:.3f}]')
        print(line)
    opt = wrappers[1].optimizer
    backbone = [
        p for n, p in models[1].named_parameters()
        if n.startswith('backbone.') and p.requires_grad
    ]
    rest = [
        p for n, p in models[1].named_parameters()
        if not n.startswith('backbone.') and p.requires_grad
    ]
    anchored = sum(p.numel() for p in backbone + rest
                   if 'anchor' in opt.state.get(p, {}))
    rolling = sum(p.numel() for g in opt.param_groups if g['rollback'] > 0
                  for p in g['params'] if p.requires_grad)
    print(f'  OLOR-AdamW anchors: {anchored / 1e6:.2f} M elements, for the '
          f'{rolling / 1e6:.2f} M rolling-back parameters (backbone: '
          f'{sum(p.numel() for p in backbone) / 1e6:.2f} M trainable, the '
          'deepest layers at rollback 0); neck and heads '
          f'({sum(p.numel() for p in rest) / 1e6:.2f} M): none')


def describe_machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    text = (f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads')
    if device == 'cuda':
        text += f', {torch.cuda.get_device_name()}'
    if hasattr(os, 'getloadavg'):
        text += ', load average %.2f %.2f %.2f' % os.getloadavg()
    return text
