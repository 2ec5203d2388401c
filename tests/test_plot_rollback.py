# Copyright (c) mmolor contributors. All rights reserved.
"""tools/analysis_tools/plot_rollback.py on shipped configs: the strengths it
draws are the ones the constructor assigns, layer by layer."""
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

from benchmarks.rollback import rollback_by_layer
from reference import rollback_by_depth

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MASK_RCNN = 'configs/mask_rcnn/mask-rcnn_r50_fpn_olor-adamw_1x_coco.py'
UPERNET = 'configs/upernet/upernet_r50_olor-sgd_4xb4-80k_ade20k-512x512.py'


def resnet50_layers():
    return ['stem'] + [
        f'layer{s + 1}.{b}' for s, n in enumerate([3, 4, 6, 3])
        for b in range(n)
    ]


def test_rollback_by_layer_on_the_mask_rcnn_config():
    cfg = Config.fromfile(osp.join(ROOT, MASK_RCNN))
    rows = rollback_by_layer(cfg)
    assert [r['layer'] for r in rows] == resnet50_layers()
    assert all(r['scope'] == 'backbone' for r in rows)
    for depth, row in enumerate(rows):
        assert row['depth'] == depth
        if depth <= 3:  # frozen_stages=1: stem and layer1 are not trained
            assert row['rollback'] is None
        else:
            assert row['rollback'] == pytest.approx(
                rollback_by_depth(depth, 16, 0.01, 0.0, 1.0))
    assert rows[0]['params'] == 64 * 3 * 7 * 7 + 2 * 64


def test_rollback_by_layer_modes_and_errors():
    cfg = Config.fromfile(osp.join(ROOT, MASK_RCNN))
    cfg.optim_wrapper.paramwise_cfg.rollback.layer = 'stage'
    rows = rollback_by_layer(cfg)
    assert [r['layer']
            for r in rows] == ['stem'] + [f'layer{i}' for i in range(1, 5)]
    assert [r['rollback'] for r in rows][2:] == pytest.approx(
        [rollback_by_depth(d, 4, 0.01, 0.0, 1.0) for d in (2, 3, 4)])
    del cfg.optim_wrapper.paramwise_cfg['rollback']
    with pytest.raises(ValueError, match='rollback'):
        rollback_by_layer(cfg)


@pytest.mark.slow
def test_plot_rollback_tool_on_a_shipped_mmseg_config(tmp_path):
    out = tmp_path / 'rollback.png'
    proc = subprocess.run([
        sys.executable, 'tools/analysis_tools/plot_rollback.py', UPERNET,
        '--out',
        str(out), '--cfg-options',
        'optim_wrapper.paramwise_cfg.rollback.max=0.01',
        'optim_wrapper.paramwise_cfg.rollback.min=0.0',
        'optim_wrapper.paramwise_cfg.rollback.power=2.0'
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 1000
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    # The tool's table follows the constructor's log.
    (start, ) = [
        i for i, line in enumerate(lines)
        if line.split() == ['layer', 'params', 'rollback']
    ]
    table = {line.split()[0]: line.split()[-1] for line in lines[start + 1:-1]}
    assert list(table) == resnet50_layers()  # ResNetV1c: a deep stem
    for depth, layer in enumerate(resnet50_layers()):
        want = rollback_by_depth(depth, 16, 0.01, 0.0, 2.0)
        assert float(table[layer]) == pytest.approx(want, rel=1e-5, abs=1e-12)


def test_rollback_by_layer_on_an_amp_config():
    # the ConvNeXt Mask R-CNN recipe uses AmpOptimWrapper, which mmengine
    # builds only with CUDA; the rollback is read from the param groups
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/convnext/'
        'mask-rcnn_convnext-t-p4-w7_fpn_olor-adamw_amp-ms-crop-3x_coco.py'))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    cfg.model.backbone.init_cfg = None  # no download
    rows = rollback_by_layer(cfg)
    assert [r['depth'] for r in rows] == list(range(19))  # stem + 18 blocks
    assert [r['rollback'] for r in rows] == pytest.approx(
        [rollback_by_depth(d, 18, 0.01, 0.0, 1.0) for d in range(19)])
