# Copyright (c) mmolor contributors. All rights reserved.
"""The jobs of the forgetting benchmark, run in worker processes.

- :func:`prepare_upstream_job`: pre-train and save one upstream model;
- :func:`prepare_data_job`: write one set of downstream data (scenes with
  their instance masks and label maps, and classification crops);
- :func:`run_one`: fine-tune one (task, regime, method, setting, seed)
  through the task's runner and measure it (and, for AdamW, WiSE-FT).

Used by ``tools/analysis_tools/forgetting_benchmark.py``.
"""
import contextlib
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.runner import Runner

import mmolor.engine  # noqa: F401  OLORDriftHook in the det config
from .datasets import (write_digit_crops, write_digit_scenes,
                       write_semantic_masks)
from .protocol import (Upstream, backbone_state, load_upstream,
                       measure_backbone, prepare_upstream, read_curve,
                       upstream_test_root)
from .retention import old_head_accuracy
from .tasks import (REGIMES, TASKS, has_test_split, method_config,
                    task_config)

__all__ = [
    'digits_name', 'prepare_upstream_job', 'prepare_data_job', 'run_one'
]


def digits_name(classes: Sequence[int]) -> str:
    return '-'.join(map(str, classes))


def prepare_upstream_job(seed: int,
                         classes: Sequence[int],
                         matched: bool,
                         steps: int,
                         out_dir: str,
                         threads: Optional[int] = None) -> Dict:
    """Pre-train, save and score one upstream model.

    Returns:
        dict: ``checkpoint``, ``scores`` (the pre-trained model's upstream
        accuracies) and ``wall_s``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.time()
    # The loss once, at the end: the tool prints a line per upstream.
    upstream = prepare_upstream(
        out_dir,
        seed=seed,
        steps=steps,
        classes=classes,
        matched=matched,
        log_interval=steps)
    return dict(
        checkpoint=upstream.checkpoint,
        scores=upstream.scores,
        wall_s=round(time.time() - start, 1))


def prepare_data_job(seed: int, classes: Sequence[int],
                     scenes: Sequence[int], crops: Sequence[int],
                     data_root: str) -> Dict:
    """Write the downstream data of one (classes, size, seed).

    Args:
        seed (int): Seed of the split and of the composition.
        classes (Sequence[int]): The downstream digits.
        scenes (Sequence[int]): ``(train, val)`` scenes (det and seg); the
            test split has as many as val.
        crops (Sequence[int]): ``(train, val)`` crops (cls); test as val.
        data_root (str): Where they go.

    Returns:
        dict: ``data_root`` (with a trailing separator) and ``wall_s``.
    """
    start = time.time()
    write_digit_scenes(
        data_root,
        classes=classes,
        num_images=dict(train=scenes[0], val=scenes[1], test=scenes[1]),
        seed=seed)
    write_semantic_masks(data_root)
    write_digit_crops(
        data_root,
        classes=classes,
        num_images=dict(train=crops[0], val=crops[1], test=crops[1]),
        seed=seed)
    return dict(
        data_root=osp.join(data_root, ''),
        wall_s=round(time.time() - start, 1))


def _scores(state: Dict[str, torch.Tensor], upstream: Upstream) -> Dict:
    """Refit upstream scores (kNN, probe) and drift of a fine-tuned
    backbone, as result fields."""
    scores, drift = measure_backbone(state, upstream)
    before = upstream.scores
    out = dict(
        upstream_knn_before=before['knn'],
        upstream_knn_after=scores['knn'],
        upstream_probe_before=before['probe'],
        upstream_probe_after=scores['probe'],
        upstream_head_reest_before=scores['head_reest_before'],
        upstream_head_reest_after=scores['head_reest'],
        upstream_cka=scores['cka'],
        drift_stem=drift[0]['drift'],
        drift_mean=sum(r['drift'] for r in drift) / len(drift),
        drift_by_layer={r['layer']: r['drift']
                        for r in drift})
    return out


def _metrics(task: str, metrics: Dict[str, float]) -> Dict[str, float]:
    spec = TASKS[task]
    out = dict(downstream=float(metrics[spec.metric]) * spec.scale)
    out.update({
        key: float(metrics[name]) * spec.scale
        for key, name in spec.extra.items()
    })
    return out


def _prefixed(prefix: str, fields: Dict[str, float]) -> Dict[str, float]:
    return {prefix + k: v for k, v in fields.items()}


def interpolate(theta0: Dict[str, torch.Tensor],
                theta1: Dict[str, torch.Tensor],
                alpha: float) -> Dict[str, torch.Tensor]:
    """WiSE-FT's weights ``theta0 + alpha * (theta1 - theta0)`` for every
    floating-point entry (buffers too); other entries from ``theta1``."""
    return {
        k: theta0[k] + alpha * (v - theta0[k])
        if v.is_floating_point() else v.clone()
        for k, v in theta1.items()
    }


def _save_backbone(state: Dict[str, torch.Tensor], work_dir: str,
                   name: str) -> str:
    path = osp.join(work_dir, name)
    torch.save(
        dict(state_dict={'backbone.' + k: v
                         for k, v in state.items()}), path)
    return path


def run_one(task: str,
            regime: str,
            method: str,
            config: Dict,
            seed: int,
            data_root: str,
            upstream: str,
            work_dir: str,
            iters: int,
            val_interval: Optional[int] = None,
            test: bool = True,
            wise_ft: Sequence[float] = (),
            verbose: bool = False,
            threads: Optional[int] = None) -> List[Dict]:
    """Fine-tune once through the task's runner and measure.

    Args:
        task (str): ``'det'``, ``'seg'`` or ``'cls'``.
        regime (str): A key of :data:`~benchmarks.tasks.REGIMES`.
        method (str), config (dict): The method and its setting
            (:func:`~benchmarks.tasks.method_config`).
        seed (int): The runner's seed (``randomness.seed``).
        data_root (str): The downstream data.
        upstream (str): The upstream checkpoint.
        work_dir (str): The runner's work dir.
        iters (int): Training iterations.
        val_interval (int, optional): Also validate every this many
            iterations; the entry then has ``curve``, ``[iteration,
            downstream]`` pairs (the last one is ``downstream``). Defaults
            to None (validate at the end only).

    With ``test`` (default True) and where the data has a test split
    (:func:`~benchmarks.tasks.has_test_split`) the entries also have the test split's metrics of the last iterate
    (``test_downstream``, ...) and, with ``val_interval``, of the
    checkpoint best on validation (``best_iter``, ``test_best_downstream``,
    ...: the first iteration with the highest validation metric).
        wise_ft (Sequence[float]): For ``adamw`` only: also evaluate
            WiSE-FT, the backbone interpolated from the upstream weights
            toward the fine-tuned ones by each alpha (heads as
            fine-tuned), downstream and upstream, without training.
            Defaults to ().
        verbose (bool): Keep the runner's INFO logs on the console.
            Defaults to False.
        threads (int, optional): ``torch.set_num_threads`` for the run.

    Returns:
        list[dict]: The run's result entry, then one per WiSE-FT alpha.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if wise_ft and method != 'adamw':
        raise ValueError('WiSE-FT interpolates the adamw run; got '
                         f'method {method!r}')
    classes = REGIMES[regime].downstream_classes
    cfg = task_config(task, classes, data_root, upstream, work_dir, iters,
                      seed)
    cfg = method_config(cfg, task, method, config)
    test = test and has_test_split(task, data_root)
    if val_interval is not None:
        cfg.train_cfg.val_interval = val_interval
        if test:  # keep the checkpoint best on validation
            cfg.default_hooks.checkpoint.update(
                save_best=TASKS[task].metric, rule='greater')
    # Logger and visualizer are named instances (mmengine's ManagerMixin):
    # a name of their own per run, or a later run in this process writes
    # into an earlier run's files.
    cfg.experiment_name = osp.basename(osp.normpath(work_dir))
    cfg.visualizer.name = f'{work_dir}/{time.time()}'
    if not verbose:
        cfg.log_level = 'WARNING'
    os.makedirs(work_dir, exist_ok=True)
    up = load_upstream(upstream)
    common = dict(
        task=task,
        regime=regime,
        seed=seed,
        upstream=osp.basename(upstream),
        iters=iters)
    start = time.time()
    # COCO evaluation prints its tables with print(): keep them in a file.
    with open(osp.join(work_dir, 'stdout.txt'), 'w') as out, \
            (contextlib.nullcontext() if verbose else
             contextlib.redirect_stdout(out)):
        runner = Runner.from_cfg(cfg)
        runner.train()
        hub = runner.message_hub
        metric_names = [TASKS[task].metric, *TASKS[task].extra.values()]
        metrics = {
            name: hub.get_scalar(f'val/{name}').current()
            for name in metric_names
        }
        backbone = runner.model.backbone
        tuned = {k: v.detach().clone() for k, v in
                 backbone.state_dict().items()}
        # Backbone-only files (tensors only: loadable with
        # weights_only=True) for the upstream measurement.
        checkpoints = [_save_backbone(tuned, work_dir, 'backbone.pth')]
        entries = [
            dict(
                common,
                method=method,
                config=dict(config),
                **_metrics(task, metrics),
                **_scores(tuned, up),
                wall_s=round(time.time() - start, 1))
        ]
        if test:
            entries[0].update(
                _prefixed('test_', _metrics(task, runner.test_loop.run())))
        if val_interval is not None:
            spec = TASKS[task]
            entries[0]['curve'] = [[
                step, value * spec.scale
            ] for step, value in read_curve(runner.log_dir, spec.metric)]
        if test and val_interval is not None:
            # The checkpoint best on validation (the whole model), on test,
            # before WiSE-FT's validations (the checkpoint hook would take
            # an interpolation as the best); then the last weights again.
            curve = entries[0]['curve']
            best = max(range(len(curve)), key=lambda i: curve[i][1])
            runner.load_checkpoint(runner.message_hub.get_info('best_ckpt'))
            entries[0].update(
                best_iter=curve[best][0],
                best_val_downstream=curve[best][1],
                **_prefixed('test_best_',
                            _metrics(task, runner.test_loop.run())))
            runner.load_checkpoint(runner.message_hub.get_info('last_ckpt'))
        theta0 = backbone_state(upstream)
        for alpha in wise_ft:
            start = time.time()
            weights = interpolate(theta0, tuned, alpha)
            backbone.load_state_dict(weights)
            metrics = runner.val_loop.run()
            fields = _metrics(task, metrics)
            if test:
                fields.update(
                    _prefixed('test_', _metrics(task,
                                                runner.test_loop.run())))
            checkpoints.append(
                _save_backbone(weights, work_dir,
                               f'backbone_wise-ft_{alpha:g}.pth'))
            entries.append(
                dict(
                    common,
                    method='wise-ft',
                    config=dict(alpha=alpha),
                    **fields,
                    **_scores(weights, up),
                    wall_s=round(time.time() - start, 1)))

        del runner
        # The old head: the upstream classifier with each backbone swapped
        # in, evaluated by upstream_retention.py.
        start = time.time()
        before, after = old_head_accuracy(
            upstream, REGIMES[regime].upstream_classes,
            upstream_test_root(upstream), checkpoints,
            osp.join(work_dir, 'upstream_retention'))
    share = (time.time() - start) / len(entries)
    for entry, head in zip(entries, after):
        entry.update(
            upstream_head_before=before,
            upstream_head_after=head,
            wall_s=round(entry['wall_s'] + share, 1))
    return entries
