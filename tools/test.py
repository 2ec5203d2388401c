# Copyright (c) mmolor contributors. All rights reserved.
"""Test (and evaluate) a detector (mmdet) or a segmentor (mmseg) config.

The arguments are those of mmdet's and mmseg's ``tools/test.py``; what
``--out``, ``--show-dir`` and ``--tta`` do follows the package named by the
config's ``default_scope``. Importing mmolor makes checkpoints load on
torch >= 2.6, and ``--launcher pytorch`` works on CPU-only machines.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from copy import deepcopy

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmolor  # noqa: F401  registries; mmolor.compat's fixes (runner loaded)
from mmolor.compat.dist import prepare_dist
from mmolor.compat.checkpoint import trust_checkpoints
from mmolor.utils import load_config, setup_scope
from mmolor.version import MissingExtraError


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and eval) a detector (mmdet) or a segmentor '
        '(mmseg) config; the config\'s default_scope picks the codebase.')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--trust-checkpoint',
        action='append',
        metavar='PATH',
        help='load this checkpoint even if torch refuses it with '
        'weights_only=True (which can run code from the file: only for files '
        'you trust); repeat for more files. Appends to '
        'MMOLOR_TRUSTED_CHECKPOINTS')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics; '
        'defaults to the config\'s work_dir, else '
        './work_dirs/<config file name>')
    parser.add_argument(
        '--out',
        type=str,
        help='dump predictions for offline evaluation: mmdet, a .pkl file; '
        'mmseg, a directory for the prediction maps (keep_results)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved: mmdet puts '
        'them in work_dir/timestamp/SHOW_DIR, mmseg in '
        'SHOW_DIR/vis_data/vis_image (every default_hooks.visualization.'
        'interval images)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
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
        help='job launcher (pytorch for tools/dist_test.sh, slurm for '
        'tools/slurm_test.sh); on machines without a GPU the gloo backend '
        'is used')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test time augmentation (the config\'s tta_model and '
        'tta_pipeline; mmdet configs get a flip TTA when they lack them)')
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


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace,
                               scope: str) -> Config:
    """Turn on the visualization hook of ``default_hooks``.

    mmdet's ``DetVisualizationHook`` writes to its ``test_out_dir``; mmseg's
    ``SegVisualizationHook`` writes through the visualizer's ``save_dir``.
    """
    default_hooks = cfg.get('default_hooks', None) or dict()
    if 'visualization' not in default_hooks:
        sys.exit('error: --show/--show-dir need a VisualizationHook in '
                 'default_hooks, e.g. default_hooks = dict(visualization='
                 "dict(type='DetVisualizationHook')) (mmdet) or "
                 "dict(type='SegVisualizationHook') (mmseg).")
    visualization_hook = default_hooks['visualization']
    # Turn on visualization
    visualization_hook['draw'] = True
    if args.show:
        visualization_hook['show'] = True
        visualization_hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            visualization_hook['test_out_dir'] = args.show_dir
    return cfg


def set_det_tta(cfg: Config) -> None:
    """mmdet's ``--tta``: a flip TTA unless the config has its own."""
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, '
                      'we will set it as default.')
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, '
                      'we will set it as default.')
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        flip_tta = dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ],
                [
                    dict(
                        type='PackDetInputs',
                        meta_keys=('img_id', 'img_path', 'ori_shape',
                                   'img_shape', 'scale_factor', 'flip',
                                   'flip_direction'))
                ],
            ])
        cfg.tta_pipeline[-1] = flip_tta
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def set_tta(cfg: Config) -> None:
    """mmseg's (and any other codebase's) ``--tta``: the config's own."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        sys.exit(f'error: --tta needs {" and ".join(missing)} in the config '
                 '(mmseg configs inherit them from _base_/default_runtime.py '
                 'and the dataset configs).')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main():
    args = parse_args()
    # before the runner loads anything; dist workers inherit it
    trust_checkpoints(args.trust_checkpoint)

    # load config
    cfg = load_config(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', None)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args, scope)

    if args.tta:
        if scope == 'mmdet':
            set_det_tta(cfg)
        else:
            set_tta(cfg)

    if args.out is not None:
        if scope == 'mmseg':
            # mmseg's IoUMetric writes the prediction maps there
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif not args.out.endswith(('.pkl', '.pickle')):
            sys.exit(f'error: --out must be a .pkl or .pickle file, got '
                     f'{args.out}')

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

    # add `DumpResults` dummy metric
    if args.out is not None and scope != 'mmseg':
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults as DumpResults
        else:
            from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))

    # start testing
    runner.test()


if __name__ == '__main__':
    try:
        main()
    except MissingExtraError as e:  # one line: the extra to install
        sys.exit(f'error: {e}')
