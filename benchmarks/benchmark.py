# Copyright (c) mmolor contributors. All rights reserved.
"""One run of the forgetting benchmark: fine-tune in-process and measure.

Used by ``tools/analysis_tools/forgetting_benchmark.py``, one call per
(method, setting, seed), possibly in worker processes.
"""
import contextlib
import copy
import os
import os.path as osp
import time
from typing import Dict, Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmolor.engine  # noqa: F401  OLORDriftHook in the demo configs
from .l2sp import l2sp_model_cfg
from .protocol import (DEMO_CONFIGS, Upstream, load_upstream, measure_backbone,
                       path_options, prepare_scenes, prepare_upstream)

__all__ = ['prepare_seed', 'run_config', 'run_one']

METHODS = ('adamw', 'l2sp', 'olor')


def prepare_seed(seed: int,
                 seed_dir: str,
                 upstream_steps: int,
                 scenes: Dict[str, int],
                 threads: Optional[int] = None) -> Dict:
    """Pre-train the upstream model and write the scenes of one seed.

    Args:
        seed (int): The seed.
        seed_dir (str): Gets ``upstream/`` and ``data/``.
        upstream_steps (int): Upstream pre-training steps.
        scenes (dict): Scenes per split (``train``, ``val``).
        threads (int, optional): ``torch.set_num_threads`` for the work.
            Defaults to None (unchanged).

    Returns:
        dict: ``seed``, ``checkpoint``, ``data_root``, ``scores`` (the
        pre-trained model's upstream accuracies) and ``wall_s``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.time()
    upstream = prepare_upstream(
        osp.join(seed_dir, 'upstream'), seed=seed, steps=upstream_steps)
    data_root = prepare_scenes(
        osp.join(seed_dir, 'data'), seed=seed, num_images=scenes)
    return dict(
        seed=seed,
        checkpoint=upstream.checkpoint,
        data_root=data_root,
        scores=upstream.scores,
        wall_s=round(time.time() - start, 1))


def run_config(method: str,
               config: Dict,
               seed: int,
               data_root: str,
               checkpoint: str,
               work_dir: str,
               iters: int,
               verbose: bool = False) -> Config:
    """The runner config of one run.

    Args:
        method (str): ``'adamw'``, ``'l2sp'`` (config ``alpha``) or
            ``'olor'`` (config ``r_max`` and ``power``).
        config (dict): The method's setting.
        seed (int): Seed of the run (``randomness.seed``).
        data_root (str): The downstream scenes.
        checkpoint (str): The upstream checkpoint.
        work_dir (str): The runner's work dir.
        iters (int): Training iterations.
        verbose (bool): Keep the runner's INFO logs. Defaults to False.

    Returns:
        Config: The demo config (``configs/demo/``) of the method, adjusted.
    """
    if method not in METHODS:
        raise ValueError(f'Invalid method: {method!r} (expected one of '
                         f'{METHODS})')
    cfg = Config.fromfile(
        DEMO_CONFIGS['olor' if method == 'olor' else 'adamw'])
    options = path_options(data_root, checkpoint)
    options.update({
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
        'randomness.seed': seed,
        'work_dir': work_dir,
    })
    cfg.merge_from_dict(options)
    if not verbose:
        cfg.log_level = 'WARNING'
    if method == 'olor':
        cfg.optim_wrapper.paramwise_cfg.rollback.update(
            max=config['r_max'], power=config['power'])
    elif method == 'l2sp':
        from mmdet.registry import MODELS
        cfg.model = l2sp_model_cfg(
            cfg.model, config['alpha'], scope=['backbone'], registry=MODELS)
    return cfg


def run_one(method: str,
            config: Dict,
            seed: int,
            data_root: str,
            upstream: Upstream,
            work_dir: str,
            iters: int,
            verbose: bool = False,
            threads: Optional[int] = None) -> Dict:
    """Fine-tune once and measure; returns the benchmark's result entry.

    Args:
        method, config, seed, data_root, work_dir, iters, verbose: As for
            :func:`run_config`.
        upstream (Upstream | str): The upstream model, or its checkpoint
            (rebuilt with :func:`~benchmarks.protocol.load_upstream`).
        threads (int, optional): ``torch.set_num_threads`` for the run.
            Defaults to None (unchanged).

    Returns:
        dict: ``method``, ``config``, ``seed``, ``downstream`` (COCO bbox
        mAP), ``upstream_before`` / ``upstream_after`` (kNN accuracy), and
        the other scores, drifts and the wall time.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if isinstance(upstream, str):
        upstream = load_upstream(upstream)
    cfg = run_config(method, config, seed, data_root, upstream.checkpoint,
                     work_dir, iters, verbose)
    os.makedirs(work_dir, exist_ok=True)
    start = time.time()
    # COCO evaluation prints its tables with print(): keep them in a file.
    with open(osp.join(work_dir, 'stdout.txt'), 'w') as out, \
            (contextlib.nullcontext() if verbose else
             contextlib.redirect_stdout(out)):
        runner = Runner.from_cfg(cfg)
        runner.train()
    hub = runner.message_hub
    metrics = {
        key: float(hub.get_scalar(f'val/coco/{key}').current())
        for key in ('bbox_mAP', 'segm_mAP')
    }
    state = copy.deepcopy(runner.model.backbone.state_dict())
    del runner
    scores, drift = measure_backbone(state, upstream)
    before = upstream.scores
    return dict(
        method=method,
        config=config,
        seed=seed,
        downstream=metrics['bbox_mAP'],
        upstream_before=before['knn'],
        upstream_after=scores['knn'],
        downstream_segm=metrics['segm_mAP'],
        upstream_probe_before=before['probe'],
        upstream_probe_after=scores['probe'],
        upstream_head_before=before['head'],
        upstream_head_after=scores['head'],
        drift_stem=drift[0]['drift'],
        drift_mean=sum(r['drift'] for r in drift) / len(drift),
        drift_by_layer={r['layer']: r['drift']
                        for r in drift},
        wall_s=round(time.time() - start, 1))
