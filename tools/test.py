# Copyright (c) mmolor contributors. All rights reserved.
"""Test (and evaluate) a detector (mmdet) or a segmentor (mmseg) config.

The arguments are those of mmdet's and mmseg's ``tools/test.py``; what
``--out``, ``--show-dir`` and ``--tta`` do follows the package named by the
config's ``default_scope``. Importing mmolor makes checkpoints load on
torch >= 2.6, and ``--launcher pytorch`` works on CPU-only machines.
"""
import argparse
import warnings
from copy import deepcopy

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

from mmengine.config import Config, ConfigDict  # noqa: E402

import mmolor  # noqa: F401,E402  registries; mmolor.compat's fixes
from mmolor.compat.checkpoint import trust_checkpoints  # noqa: E402
from mmolor.utils import cli  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and eval) a detector (mmdet) or a segmentor '
        '(mmseg) config; the config\'s default_scope picks the codebase.')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
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
        '--tta',
        action='store_true',
        help='test time augmentation (the config\'s tta_model and '
        'tta_pipeline; mmdet configs get a flip TTA when they lack them)')
    cli.add_runner_args(
        parser, 'test', 'the directory to save the file containing '
        'evaluation metrics; defaults to the config\'s work_dir, else '
        './work_dirs/<config file name>')
    args = cli.parse_runner_args(parser)
    cli.check_file(parser, 'checkpoint', args.checkpoint, url=True)
    return parser, args


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace,
                               scope: str) -> Config:
    """Turn on the visualization hook of ``default_hooks``.

    mmdet's ``DetVisualizationHook`` writes to its ``test_out_dir``; mmseg's
    ``SegVisualizationHook`` writes through the visualizer's ``save_dir``.
    ValueError if the config has no visualization hook.
    """
    default_hooks = cfg.get('default_hooks', None) or dict()
    if 'visualization' not in default_hooks:
        raise ValueError(
            '--show/--show-dir need a VisualizationHook in default_hooks, '
            'e.g. default_hooks = dict(visualization='
            "dict(type='DetVisualizationHook')) (mmdet) or "
            "dict(type='SegVisualizationHook') (mmseg)")
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
    """mmseg's (and any other codebase's) ``--tta``: the config's own;
    ValueError if it has none."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ValueError(
            f'--tta needs {" and ".join(missing)} in the config (mmseg '
            'configs inherit them from _base_/default_runtime.py and the '
            'dataset configs)')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main():
    parser, args = parse_args()
    # before the runner loads anything; dist workers inherit it
    trust_checkpoints(args.trust_checkpoint)

    # config, --cfg-options, --launcher and work_dir
    cfg = cli.load_tool_config(args.config, args.cfg_options,
                               args.work_dir, args.launcher)
    scope = cfg.get('default_scope', None)

    cfg.load_from = args.checkpoint

    try:
        if args.show or args.show_dir:
            cfg = trigger_visualization_hook(cfg, args, scope)
        if args.tta:
            if scope == 'mmdet':
                set_det_tta(cfg)
            else:
                set_tta(cfg)
    except ValueError as e:
        parser.error(str(e))

    if args.out is not None:
        if scope == 'mmseg':
            # mmseg's IoUMetric writes the prediction maps there
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif not args.out.endswith(('.pkl', '.pickle')):
            parser.error(f'--out must be a .pkl or .pickle file, got '
                         f'{args.out!r}')

    # the codebase's scope; gloo and a CPU model wrapper without a GPU
    runner = cli.build_runner(cfg)

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
    cli.run_main(main)
