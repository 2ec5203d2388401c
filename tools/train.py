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
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmolor  # noqa: F401  registries; mmolor.compat's fixes (runner loaded)
from mmolor.compat.dist import has_accelerator, prepare_dist
from mmolor.compat.checkpoint import trust_checkpoints
from mmolor.utils import load_config, setup_scope
from mmolor.version import MissingExtraError


def parse_args():
    parser = argparse.ArgumentParser(
        description='Train a detector (mmdet) or a segmentor (mmseg) config '
        'with mmolor; the config\'s default_scope picks the codebase.')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--work-dir',
        help='the dir to save logs and models; defaults to the config\'s '
        'work_dir, else ./work_dirs/<config file name>')
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
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (pytorch for tools/dist_train.sh, slurm for '
        'tools/slurm_train.sh); on machines without a GPU the gloo backend '
        'is used')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help='set by torch.distributed.launch; torchrun uses the LOCAL_RANK '
        'environment variable instead')
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def enable_amp(cfg: Config) -> None:
    """Switch ``cfg.optim_wrapper`` to AmpOptimWrapper, as mmseg does."""
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print_log(
            'AMP training is already enabled in your config.',
            logger='current',
            level=logging.WARNING)
        return
    if optim_wrapper != 'OptimWrapper':
        sys.exit('error: `--amp` is only supported when the optimizer '
                 f'wrapper type is `OptimWrapper`, but got {optim_wrapper}.')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def main():
    args = parse_args()
    # before the runner loads anything; dist workers inherit it
    trust_checkpoints(args.trust_checkpoint)

    # load config
    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        enable_amp(cfg)
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper' and \
            not has_accelerator():
        # AmpOptimWrapper asserts a GPU (or NPU/MLU/MUSA) when it is built.
        sys.exit('error: AMP training (`--amp` or '
                 "optim_wrapper.type='AmpOptimWrapper') needs a GPU, and "
                 'none is available on this machine; train without --amp.')

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and \
                'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            sys.exit('error: --auto-scale-lr needs "auto_scale_lr" with '
                     '"enable" and "base_batch_size" in the config, e.g. '
                     'auto_scale_lr = dict(enable=False, base_batch_size=16)')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    setup_scope(cfg)
    # gloo process group and CPU model wrapper when there is no GPU
    prepare_dist(cfg)

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry
        # if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    # start training
    runner.train()


if __name__ == '__main__':
    try:
        main()
    except MissingExtraError as e:  # one line: the extra to install
        sys.exit(f'error: {e}')
