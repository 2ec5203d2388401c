# Copyright (c) mmolor contributors. All rights reserved.
"""How much of its upstream task a fine-tuned backbone still solves.

Evaluates an mmpretrain classifier (``UPSTREAM_CONFIG``: its test dataloader
and evaluator) with its own weights (``UPSTREAM_CHECKPOINT``), then with the
backbone of each fine-tuned checkpoint (a detector, segmentor or classifier
saved by mmengine) in place of its own; the upstream neck and head stay. The
evaluation is mmengine's ``Runner.test()`` with mmpretrain's evaluator, run
once per set of weights, so each row is what mmpretrain's test tool prints
for a checkpoint holding those weights. Beside the metrics it gives each
backbone's drift ||theta - theta_0|| / ||theta_0|| from the upstream one,
per stage and as the mean of the stages.

Prints one table and writes ``<work_dir>/upstream_retention.json``; the last
line printed is its path.

Example:
    python tools/analysis_tools/upstream_retention.py \\
        mmpretrain::convnext/convnext-tiny_32xb128_in1k.py \\
        convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth \\
        work_dirs/mask-rcnn_convnext-t_olor/epoch_36.pth \\
        --cfg-options test_dataloader.dataset.data_root=data/imagenet
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Tuple

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
from torch import Tensor

import mmolor  # noqa: F401  registries; mmolor.compat's fixes (runner loaded)
from mmolor.compat.checkpoint import (UntrustedCheckpointError,
                                      trust_checkpoints)
from mmolor.engine.drift import layer_drift
from mmolor.utils import load_config, setup_scope
from mmolor.version import MissingExtraError, require

UPSTREAM_PREFIX = 'backbone.'
JSON_NAME = 'upstream_retention.json'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Evaluate an mmpretrain classifier with the backbones '
        'of fine-tuned checkpoints swapped in (its head and neck kept), and '
        'measure how far each backbone drifted from the upstream one.')
    parser.add_argument(
        'upstream_config',
        help='mmpretrain classifier config (a file, or e.g. '
        '"mmpretrain::convnext/convnext-tiny_32xb128_in1k.py"): its model, '
        'test dataloader and test evaluator are used')
    parser.add_argument(
        'upstream_checkpoint',
        help='the classifier\'s own weights (a file or a URL)')
    parser.add_argument(
        'checkpoints',
        nargs='+',
        metavar='checkpoint',
        help='fine-tuned checkpoints (mmengine files of any codebase) whose '
        'backbone is evaluated')
    parser.add_argument(
        '--prefix',
        default=UPSTREAM_PREFIX,
        help='where the backbone\'s entries start in the fine-tuned '
        f'checkpoints\' state dicts (default: {UPSTREAM_PREFIX!r})')
    parser.add_argument(
        '--work-dir',
        help='where the logs and upstream_retention.json go; defaults to '
        'the config\'s work_dir, else ./work_dirs/<config file name>')
    parser.add_argument(
        '--trust-checkpoint',
        action='append',
        metavar='PATH',
        help='load this checkpoint even if torch refuses it with '
        'weights_only=True (which can run code from the file: only for files '
        'you trust); repeat for more files. Appends to '
        'MMOLOR_TRUSTED_CHECKPOINTS')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings of UPSTREAM_CONFIG, as for '
        'tools/test.py (e.g. test_dataloader.dataset.data_root=data/in1k)')
    return parser.parse_args(argv)


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


def main(argv=None):
    args = parse_args(argv)
    trust_checkpoints(args.trust_checkpoint)
    require('cls', 'upstream_retention.py (the upstream model is an '
            'mmpretrain classifier)')
    # `mmpretrain::convnext/...` names a config inside a package.
    cfg = load_config(args.upstream_config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join(
            './work_dirs',
            osp.splitext(osp.basename(args.upstream_config))[0])
    # The tool loads every set of weights itself.
    cfg.load_from, cfg.resume = None, False

    try:
        check_classifier(cfg, args.upstream_config)
        upstream_state = load_state(args.upstream_checkpoint)
        upstream = backbone_state(upstream_state, UPSTREAM_PREFIX,
                                  args.upstream_checkpoint)
        backbones = []
        for path in args.checkpoints:
            found = backbone_state(load_state(path), args.prefix, path)
            backbone, unused = match_backbone(found, upstream, path)
            if unused:
                print_log(
                    f'{path}: {len(unused)} backbone entries the upstream '
                    f'backbone lacks are not used: {unused}',
                    logger='current')
            backbones.append(backbone)
    except (ValueError, FileNotFoundError, UntrustedCheckpointError) as e:
        sys.exit(f'error: {e}')

    setup_scope(cfg)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    expected = model.backbone.state_dict()
    lacking = [k for k in expected if k not in upstream]
    if lacking:
        sys.exit(f'error: {args.upstream_checkpoint}: lacks '
                 f'{len(lacking)} entries of the backbone of '
                 f'{args.upstream_config}, the first '
                 f'{UPSTREAM_PREFIX + lacking[0]!r}')

    weights = [upstream_state] + [
        swap_backbone(upstream_state, b) for b in backbones
    ]
    labels = [f'upstream {args.upstream_checkpoint}'] + args.checkpoints
    metrics = evaluate(runner, weights, labels)
    params = [n for n, _ in model.backbone.named_parameters()]
    result = dict(
        upstream=dict(
            checkpoint=args.upstream_checkpoint, metrics=metrics[0]),
        checkpoints=[
            dict(
                checkpoint=path,
                metrics=m,
                drift=stage_drift(model.backbone,
                                  {n: upstream[n] for n in params},
                                  {n: b[n] for n in params}))
            for path, m, b in zip(args.checkpoints, metrics[1:], backbones)
        ])
    print(format_table(result['upstream'], result['checkpoints']))
    print(write_json(result, cfg.work_dir))


if __name__ == '__main__':
    try:
        main()
    except MissingExtraError as e:  # one line: the extra to install
        sys.exit(f'error: {e}')
