# Copyright (c) mmolor contributors. All rights reserved.
"""Train a detector (mmdet) or a segmentor (mmseg) config.

The arguments are those of mmdet's and mmseg's ``tools/train.py``. The
config's ``default_scope`` (``'mmdet'`` or ``'mmseg'``) decides which
package's registries build it. Importing mmolor registers its optimizers and
makes ``--resume``/``load_from`` work on torch >= 2.6; distributed runs
(``--launcher pytorch``/``slurm``/``mpi``) also work on CPU-only machines,
with the gloo backend.
"""
import argparse
import logging

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

import mmolor  # noqa: F401,E402  registries; mmolor.compat's fixes
from mmolor.compat.dist import has_accelerator  # noqa: E402
from mmolor.compat.checkpoint import trust_checkpoints  # noqa: E402
from mmolor.utils import cli  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description='Train a detector (mmdet) or a segmentor (mmseg) config '
        'with mmolor; the config\'s default_scope picks the codebase.')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (AmpOptimWrapper, '
        'dynamic loss scale; needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR by the total batch size '
        '(needs auto_scale_lr.base_batch_size in the config)')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    cli.add_runner_args(
        parser, 'train', 'the dir to save logs and models; defaults to the '
        'config\'s work_dir, else ./work_dirs/<config file name>')
    args = cli.parse_runner_args(parser)
    if args.resume not in (None, 'auto'):
        cli.check_file(parser, '--resume', args.resume, url=True)
    return parser, args


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to AmpOptimWrapper, as mmseg does;
    ValueError unless it is an OptimWrapper."""
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print_log(
            'AMP training is already enabled in your config.',
            logger='current',
            level=logging.WARNING)
        return
    if optim_wrapper != 'OptimWrapper':
        raise ValueError('--amp is only supported when the optimizer wrapper '
                         f'type is OptimWrapper, but got {optim_wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def main():
    parser, args = parse_args()
    # before the runner loads anything; dist workers inherit it
    trust_checkpoints(args.trust_checkpoint)

    # config, --cfg-options, --launcher and work_dir
    cfg = cli.load_tool_config(args.config, args.cfg_options,
                               args.work_dir, args.launcher)

    # enable automatic-mixed-precision training
    if args.amp is True:
        try:
            enable_amp(cfg)
        except ValueError as e:
            parser.error(str(e))
        if not has_accelerator():
            parser.error('--amp: AMP training needs a GPU, and none is '
                         'available on this machine')
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper' and \
            not has_accelerator():
        # AmpOptimWrapper asserts a GPU (or NPU/MLU/MUSA) when it is built.
        parser.error(f'config: {args.config!r} trains with AMP '
                     "(optim_wrapper.type='AmpOptimWrapper'), which needs a "
                     'GPU, and none is available on this machine')

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and \
                'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            parser.error('--auto-scale-lr needs "auto_scale_lr" with '
                         '"enable" and "base_batch_size" in the config, e.g. '
                         'auto_scale_lr = dict(enable=False, '
                         'base_batch_size=16)')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # the codebase's scope; gloo and a CPU model wrapper without a GPU
    runner = cli.build_runner(cfg)

    # start training
    runner.train()


if __name__ == '__main__':
    cli.run_main(main)
