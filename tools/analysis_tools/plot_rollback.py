# Copyright (c) mmolor contributors. All rights reserved.
"""Draw the rollback strength OLOR gives every layer of a config.

Builds the config's model (no weights are loaded) and its optim wrapper, so
the strengths are exactly those ``OLOROptimWrapperConstructor`` assigns,
``custom_keys`` included; prints them as a table and saves a bar chart.

Example:
    python tools/analysis_tools/plot_rollback.py \\
        configs/mask_rcnn/mask-rcnn_r50_fpn_olor-adamw_1x_coco.py \\
        --out rollback.png
"""
import argparse
import os.path as osp
import sys

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

import mmolor  # noqa: F401,E402  registries
from mmolor.utils import load_config, require_codebases  # noqa: E402
from mmolor.utils.cli import (add_cfg_options, add_verbose,  # noqa: E402
                              check_file, run_main)

# benchmarks/ is in the checkout, beside mmolor/, and is not installed.
sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from benchmarks.rollback import plot_rollback, rollback_by_layer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description='Plot the per-layer rollback strengths of a config')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--out',
        help='output PNG; defaults to <config name>_rollback.png in the '
        'current directory')
    add_cfg_options(
        parser, 'override some settings in the used config, as for '
        'tools/train.py (e.g. optim_wrapper.paramwise_cfg.rollback.max=0.05)')
    add_verbose(parser)
    args = parser.parse_args()
    check_file(parser, 'config', args.config, config=True)
    if args.out is not None and not osp.isdir(osp.dirname(args.out) or '.'):
        parser.error(f'--out: no such directory {osp.dirname(args.out)!r}')
    return args


def main():
    args = parse_args()
    cfg = load_config(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    require_codebases(cfg)
    rows = rollback_by_layer(cfg)
    name = osp.splitext(osp.basename(args.config))[0]
    out = args.out or f'{name}_rollback.png'
    r = cfg.optim_wrapper.paramwise_cfg.rollback
    title = (f"{name}\nr_max={r.get('max', 0.01)}, r_min={r.get('min', 0.0)}"
             f", power={r.get('power', 1.0)}, layer={r.get('layer', 'block')}")
    plot_rollback(rows, out, title=title)
    print(f"{'layer':<28} {'params':>12}  rollback")
    for row in rows:
        rollback = 'frozen' if row['rollback'] is None else \
            f"{row['rollback']:.6g}"
        print(f"{row['layer']:<28} {row['params']:>12,}  {rollback}")
    print(out)


if __name__ == '__main__':
    run_main(main)
