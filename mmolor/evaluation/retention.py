# Copyright (c) mmolor contributors. All rights reserved.
"""How much of its upstream task a fine-tuned backbone still solves.

:func:`upstream_retention` evaluates an mmpretrain classifier (its test
dataloader and evaluator) with its own weights, then with the backbone of
each fine-tuned checkpoint (a detector, segmentor or classifier saved by
mmengine) in place of its own; the upstream neck and head stay. The
evaluation is mmengine's ``Runner.test()`` with mmpretrain's evaluator, run
once per set of weights, so each row is what mmpretrain's test tool prints
for a checkpoint holding those weights. Beside the metrics it gives each
backbone's drift ||theta - theta_0|| / ||theta_0|| from the upstream one,
per stage and as the mean of the stages.

``tools/analysis_tools/upstream_retention.py`` is its command line. Needs
mmolor's ``cls`` extra (mmpretrain).

Example:
    >>> from mmolor.evaluation import format_table, upstream_retention
    >>> result = upstream_retention(
    ...     'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    ...     'convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth',
    ...     ['work_dirs/mask-rcnn_convnext-t_olor/epoch_36.pth'])
    >>> print(format_table(result['upstream'], result['checkpoints']))
"""
import json
import os
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
from torch import Tensor

from ..engine.drift import layer_drift
from ..utils.cli import load_tool_config
from ..utils.setup_env import setup_scope
from ..version import require

__all__ = [
    'upstream_retention', 'check_classifier', 'load_state', 'backbone_state',
    'match_backbone', 'swap_backbone', 'stage_drift', 'evaluate',
    'format_table', 'write_json'
]

UPSTREAM_PREFIX = 'backbone.'
JSON_NAME = 'upstream_retention.json'


def upstream_retention(upstream_config: Union[str, Config],
                       upstream_checkpoint: str,
                       checkpoints: Sequence[str],
                       prefix: str = UPSTREAM_PREFIX,
                       cfg_options: Optional[dict] = None,
                       work_dir: Optional[str] = None) -> Dict:
    """The upstream classifier's test metrics with its own backbone and
    with each checkpoint's, and each backbone's drift.

    Every input is checked (the config, every checkpoint's backbone) before
    the runner is built and anything is written.

    Args:
        upstream_config (str | Config): An mmpretrain classifier config (a
            file, e.g. ``'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py'``
            or a loaded one, whose ``work_dir`` is used): its model, test
            dataloader and test evaluator are used.
        upstream_checkpoint (str): The classifier's own weights (a file or
            a URL).
        checkpoints (Sequence[str]): Fine-tuned checkpoints (mmengine files
            of any codebase) whose backbone is evaluated.
        prefix (str): Where the backbone's entries start in the fine-tuned
            checkpoints' state dicts. Defaults to ``'backbone.'``.
        cfg_options (dict, optional): Merged into a config file.
        work_dir (str, optional): Where the runner's logs go, for a config
            file; defaults to its ``work_dir``, else
            ``./work_dirs/<config file name>``.

    Returns:
        dict: ``upstream``: ``checkpoint`` and ``metrics``;
        ``checkpoints``: per checkpoint, ``checkpoint``, ``metrics`` and
        ``drift`` (:func:`stage_drift`).

    Raises:
        MissingExtraError: mmpretrain is not installed.
        ValueError: The config is not a classifier's, or a backbone does
            not match the upstream one.
        FileNotFoundError: A checkpoint cannot be found.
        UntrustedCheckpointError: torch refuses a checkpoint with
            ``weights_only=True`` and it is not trusted.
    """
    require('cls', 'upstream_retention (the upstream model is an '
            'mmpretrain classifier)')
    if isinstance(upstream_config, Config):
        cfg = upstream_config
        upstream_config = cfg.filename
    else:
        cfg = load_tool_config(upstream_config, cfg_options, work_dir)
    # Every set of weights is loaded here.
    cfg.load_from, cfg.resume = None, False

    check_classifier(cfg, upstream_config)
    upstream_state = load_state(upstream_checkpoint)
    upstream = backbone_state(upstream_state, UPSTREAM_PREFIX,
                              upstream_checkpoint)
    backbones = []
    for path in checkpoints:
        found = backbone_state(load_state(path), prefix, path)
        backbone, unused = match_backbone(found, upstream, path)
        if unused:
            print_log(
                f'{path}: {len(unused)} backbone entries the upstream '
                f'backbone lacks are not used: {unused}',
                logger='current')
        backbones.append(backbone)

    setup_scope(cfg)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    expected = model.backbone.state_dict()
    lacking = [k for k in expected if k not in upstream]
    if lacking:
        raise ValueError(f'{upstream_checkpoint}: lacks {len(lacking)} '
                         f'entries of the backbone of {upstream_config}, the '
                         f'first {UPSTREAM_PREFIX + lacking[0]!r}')

    weights = [upstream_state] + [
        swap_backbone(upstream_state, b) for b in backbones
    ]
    labels = [f'upstream {upstream_checkpoint}'] + list(checkpoints)
    metrics = evaluate(runner, weights, labels)
    params = [n for n, _ in model.backbone.named_parameters()]
    return dict(
        upstream=dict(checkpoint=upstream_checkpoint, metrics=metrics[0]),
        checkpoints=[
            dict(
                checkpoint=path,
                metrics=m,
                drift=stage_drift(model.backbone,
                                  {n: upstream[n] for n in params},
                                  {n: b[n] for n in params}))
            for path, m, b in zip(checkpoints, metrics[1:], backbones)
        ])


def check_classifier(cfg: Config, path: str) -> None:
    """Raise ValueError unless ``cfg`` is an mmpretrain classifier config
    with a test dataloader, test config and test evaluator."""
    from mmpretrain.models import ImageClassifier
    from mmpretrain.registry import MODELS
    model_type = cfg.get('model', {}).get('type')
    model_cls = MODELS.get(model_type) if isinstance(model_type,
                                                     str) else None
    if not (isinstance(model_cls, type)
            and issubclass(model_cls, ImageClassifier)):
        raise ValueError(f'{path}: model type {model_type!r} is not an '
                         'mmpretrain ImageClassifier (a classifier config is '
                         'needed: its head scores the upstream task)')
    missing = [key for key in ('test_dataloader', 'test_cfg',
                               'test_evaluator') if cfg.get(key) is None]
    if missing:
        raise ValueError(f'{path}: has no {", ".join(missing)}: the upstream '
                         'classifier is evaluated on its test set')


def load_state(path: str) -> Dict[str, Tensor]:
    """The tensors of a checkpoint's ``state_dict`` (or of a bare state
    dict), ``module.`` prefixes removed as mmengine does. A local file or
    any URL mmengine's loader takes (as in an init_cfg), loaded with
    ``weights_only=True`` (mmolor's safe loader)."""
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: holds a {type(checkpoint).__name__}, not '
                         'a checkpoint dict')
    state = checkpoint.get('state_dict', checkpoint)
    return {
        key[len('module.'):] if key.startswith('module.') else key: value
        for key, value in state.items() if isinstance(value, Tensor)
    }


def backbone_state(state: Dict[str, Tensor], prefix: str,
                   path: str) -> Dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, the prefix removed."""
    found = {k[len(prefix):]: v for k, v in state.items()
             if k.startswith(prefix)}
    if not found:
        top = sorted({k.split('.')[0] for k in state})
        raise ValueError(f'{path}: no entries under the prefix {prefix!r} '
                         f'(top-level keys: {top}); name the backbone\'s '
                         'prefix with --prefix')
    return found


def match_backbone(finetuned: Dict[str, Tensor], upstream: Dict[str, Tensor],
                   path: str) -> Tuple[Dict[str, Tensor], List[str]]:
    """The entries of ``finetuned`` that replace the upstream backbone's,
    and the names of those the upstream backbone lacks (not used).

    Raises ValueError when an upstream entry is missing or a shape differs.
    """
    missing = [k for k in upstream if k not in finetuned]
    if missing:
        raise ValueError(
            f'{path}: its backbone lacks {len(missing)} of the upstream '
            f'backbone\'s {len(upstream)} entries, the first {missing[0]!r} '
            '(a backbone of another architecture, or other parameter names)')
    for key, value in upstream.items():
        if finetuned[key].shape != value.shape:
            raise ValueError(
                f'{path}: backbone parameter {key!r} has shape '
                f'{tuple(finetuned[key].shape)}, the upstream backbone\'s '
                f'{tuple(value.shape)}')
    unused = [k for k in finetuned if k not in upstream]
    return {k: finetuned[k] for k in upstream}, unused


def swap_backbone(state: Dict[str, Tensor],
                  backbone: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` with its ``backbone.`` entries replaced by ``backbone``."""
    return {
        **state,
        **{UPSTREAM_PREFIX + k: v for k, v in backbone.items()}
    }


def stage_drift(module, upstream: Dict[str, Tensor],
                finetuned: Dict[str, Tensor]) -> Dict:
    """Drift of every stage of ``module`` (the backbone) from ``upstream``
    to ``finetuned``, and their mean."""
    rows = layer_drift(module, upstream, finetuned, mode='stage')
    stages = [dict(stage=r['layer'], drift=r['drift'], params=r['params'])
              for r in rows]
    return dict(
        mean=sum(s['drift'] for s in stages) / len(stages), stages=stages)


def evaluate(runner: Runner, weights: List[Dict[str, Tensor]],
             labels: List[str]) -> List[Dict[str, float]]:
    """``Runner.test()`` once per state dict: the hooks and the loading of
    ``Runner.load_checkpoint`` (EMA hooks get the weights too), then the
    test loop."""
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    runner.call_hook('before_run')
    results = []
    for index, (state, label) in enumerate(zip(weights, labels)):
        print_log(f'Evaluating {label} ({index + 1}/{len(weights)})',
                  logger='current')
        checkpoint = dict(meta=dict(), state_dict=dict(state))
        runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        load_state_dict(model, checkpoint['state_dict'], logger='current')
        metrics = runner.test_loop.run()
        results.append({k: float(v) for k, v in metrics.items()})
    runner.call_hook('after_run')
    return results


def format_table(upstream: Dict, rows: List[Dict]) -> str:
    """The table the tool prints: one row per set of weights, each metric
    and its change, the mean and per-stage drift."""
    names = list(upstream['metrics'])
    stages = [s['stage'] for s in rows[0]['drift']['stages']]
    header = (['checkpoint'] + [x for n in names for x in (n, f'change {n}')]
              + ['drift mean'] + [f'drift {s}' for s in stages])
    lines = [[f"upstream: {upstream['checkpoint']}"] + [
        x for n in names for x in (f"{upstream['metrics'][n]:.2f}", '-')
    ] + ['0'] * (1 + len(stages))]
    for row in rows:
        metrics, drift = row['metrics'], row['drift']
        change = {n: metrics[n] - upstream['metrics'][n] for n in names}
        lines.append([row['checkpoint']] + [
            x for n in names for x in (f'{metrics[n]:.2f}',
                                       f'{change[n]:+.2f}')
        ] + [f"{drift['mean']:.4f}"] +
                     [f"{s['drift']:.4f}" for s in drift['stages']])
    widths = [max(len(line[i]) for line in [header] + lines)
              for i in range(len(header))]

    def fmt(cells):
        return '  '.join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] +
                     [fmt(line) for line in lines])


def write_json(result: Dict, work_dir: str) -> str:
    """Write ``result`` to ``<work_dir>/upstream_retention.json`` at once
    (a temporary file, then a rename); return its path."""
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, JSON_NAME)
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=JSON_NAME, suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
