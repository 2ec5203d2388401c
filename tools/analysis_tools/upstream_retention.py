# Copyright (c) mmolor contributors. All rights reserved.
"""How much of its upstream task a fine-tuned backbone still solves.

Evaluates an mmpretrain classifier (``UPSTREAM_CONFIG``: its test dataloader
and evaluator) with its own weights (``UPSTREAM_CHECKPOINT``), then with the
backbone of each fine-tuned checkpoint (a detector, segmentor or classifier
saved by mmengine) in place of its own; the upstream neck and head stay.
Beside the metrics it gives each backbone's drift ||theta - theta_0|| /
||theta_0|| from the upstream one, per stage and as the mean of the stages
(:func:`mmolor.evaluation.upstream_retention`).

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

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

from mmolor.compat.checkpoint import (UntrustedCheckpointError,  # noqa: E402
                                      trust_checkpoints)
from mmolor.utils.cli import (add_cfg_options, add_trust_checkpoint,  # noqa
                              add_verbose, add_work_dir, check_file,
                              load_tool_config, run_main)
from mmolor.version import require  # noqa: E402

UPSTREAM_PREFIX = 'backbone.'


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
    add_work_dir(
        parser, 'where the logs and upstream_retention.json go; defaults '
        'to the config\'s work_dir, else ./work_dirs/<config file name>')
    add_trust_checkpoint(parser)
    add_cfg_options(
        parser, 'override some settings of UPSTREAM_CONFIG, as for '
        'tools/test.py (e.g. test_dataloader.dataset.data_root=data/in1k)')
    add_verbose(parser)
    args = parser.parse_args(argv)
    check_file(parser, 'upstream_config', args.upstream_config, config=True)
    check_file(parser, 'upstream_checkpoint', args.upstream_checkpoint,
               url=True)
    for path in args.checkpoints:
        check_file(parser, 'checkpoint', path, url=True)
    if not args.prefix:
        parser.error('--prefix: empty')
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    trust_checkpoints(args.trust_checkpoint)
    require('cls', 'upstream_retention.py (the upstream model is an '
            'mmpretrain classifier)')
    from mmolor.evaluation import (format_table, upstream_retention,
                                   write_json)
    try:
        cfg = load_tool_config(args.upstream_config, args.cfg_options,
                               args.work_dir)
        result = upstream_retention(cfg, args.upstream_checkpoint,
                                    args.checkpoints, prefix=args.prefix)
    except (ValueError, FileNotFoundError, UntrustedCheckpointError) as e:
        parser.error(str(e))
    print(format_table(result['upstream'], result['checkpoints']))
    print(write_json(result, cfg.work_dir))


if __name__ == '__main__':
    run_main(main)
