# Copyright (c) mmolor contributors. All rights reserved.
"""The pieces of `make demo` (tools/demo.py) and of the forgetting benchmark:
the digits data, upstream pre-training and its checkpoint, the retention and
drift measurements, L2-SP, the report, the demo configs, and a tiny run of
the whole demo."""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from pycocotools.coco import COCO
from torch import nn

import mmolor.engine  # noqa: F401  until mmolor imports it itself
from benchmarks.datasets import (load_digit_split, render_digits,
                                 write_digit_scenes)
from benchmarks.protocol import DEMO_CONFIGS, Upstream, measure_backbone
from benchmarks.report import demo_tables, format_table, plot_drift
from benchmarks.rollback import build_model, rollback_by_layer
from benchmarks.upstream import (build_backbone, pretrain_upstream,
                                 save_upstream)
from reference import rollback_by_depth

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_digit_split_is_by_class_and_held_out():
    split = load_digit_split((3, 7), held_out=0.25, seed=1)
    (x_tr, y_tr), (x_te, y_te) = split['train'], split['test']
    assert x_tr.shape[1:] == (8, 8) and x_tr.max() <= 16
    assert set(y_tr) == set(y_te) == {0, 1}
    for label in (0, 1):
        n_test, n_all = (y_te == label).sum(), (y_tr == label).sum() + \
            (y_te == label).sum()
        assert n_test == round(0.25 * n_all)
    # The same seed gives the same split, another seed another one.
    again = load_digit_split((3, 7), held_out=0.25, seed=1)
    assert np.array_equal(again['test'][0], x_te)
    other = load_digit_split((3, 7), held_out=0.25, seed=2)
    assert not np.array_equal(other['test'][0], x_te)
    for kwargs in (dict(classes=(3, 3)), dict(classes=(10, )),
                   dict(classes=(1, ), held_out=1.0)):
        with pytest.raises(ValueError, match='Invalid'):
            load_digit_split(**{'classes': (1, ), **kwargs})


def test_render_digits():
    images = load_digit_split((0, ), seed=0)['test'][0][:3]
    out = render_digits(images, 24)
    assert out.shape == (3, 24, 24) and out.dtype == np.uint8
    assert out.max() > 200 and out.min() == 0
    assert render_digits(images[0], 16).shape == (16, 16)


def test_digit_scenes_are_coco_with_masks_from_the_ink(tmp_path):
    paths = write_digit_scenes(
        str(tmp_path),
        classes=(5, 6),
        num_images=dict(train=6, val=3),
        image_size=(64, 80),
        glyph_size=(16, 32),
        max_objects=3,
        seed=0)
    for split, count in (('train', 6), ('val', 3)):
        coco = COCO(paths[split])
        assert len(coco.getImgIds()) == count
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            ['digit_5', 'digit_6']
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= count  # at least one digit per scene
        for ann in anns:
            img = coco.loadImgs(ann['image_id'])[0]
            x, y, w, h = ann['bbox']
            assert 0 <= x and x + w <= 80 and 0 <= y and y + h <= 64
            assert 16 * 0.3 <= max(w, h) <= 32
            mask = coco.annToMask(ann)
            assert mask.shape == (img['height'], img['width'])
            # The polygons redraw the ink mask (within the outline pixels)
            # and stay inside the box.
            assert abs(mask.sum() - ann['area']) <= 0.35 * ann['area']
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x - 1 and xs.max() <= x + w
            assert ys.min() >= y - 1 and ys.max() <= y + h
            # The ink is brighter than the background under the mask.
            image = __import__('cv2').imread(
                osp.join(str(tmp_path), f'{split}2017', img['file_name']))
            assert image.shape == (64, 80, 3)
            assert image[mask > 0].mean() > image[mask == 0].mean() + 40


def test_mmdet_reads_the_scenes(tmp_path):
    write_digit_scenes(str(tmp_path), num_images=dict(train=2, val=1), seed=0)
    cfg = Config.fromfile(DEMO_CONFIGS['olor'])
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.data_root = osp.join(str(tmp_path), '')
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules()
    dataset = DATASETS.build(dataset_cfg)
    item = dataset[0]
    sample = item['data_samples']
    assert item['inputs'].shape == (3, 128, 128)
    masks = sample.gt_instances.masks
    assert len(masks) == len(sample.gt_instances.bboxes) > 0
    assert masks.to_ndarray().sum() > 0


@pytest.fixture(scope='module')
def upstream(tmp_path_factory):
    """A few steps of upstream pre-training, saved and scored."""
    work_dir = tmp_path_factory.mktemp('upstream')
    model, split = pretrain_upstream(
        classes=(0, 1, 2), steps=3, batch_size=16, seed=0, log_interval=1)
    checkpoint = str(work_dir / 'upstream.pth')
    save_upstream(model, checkpoint, meta=dict(steps=3))
    state = {
        n: p.detach().clone()
        for n, p in model.backbone.named_parameters()
    }
    from benchmarks.retention import upstream_scores
    scores = upstream_scores(model.backbone, split, head=model.head)
    return Upstream(checkpoint, split, model.head, state, scores), model


@pytest.mark.slow
def test_upstream_checkpoint_loads_through_init_cfg(upstream):
    upstream, model = upstream
    assert upstream.split['train'][0].shape[1:] == (32, 32)
    assert set(upstream.scores) == {'knn', 'probe', 'head'}
    assert all(0 <= v <= 1 for v in upstream.scores.values())
    saved = torch.load(upstream.checkpoint)
    assert saved['meta'] == dict(steps=3)
    assert {k.split('.')[0] for k in saved['state_dict']} == \
        {'backbone', 'head'}
    # What a detector's backbone does with the demo configs' init_cfg.
    backbone = build_backbone(
        dict(
            type='ResNet',
            depth=18,
            base_channels=16,
            init_cfg=dict(
                type='Pretrained',
                checkpoint=upstream.checkpoint,
                prefix='backbone.')))
    backbone.init_weights()
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[name], value)


@pytest.mark.slow
def test_measure_backbone_drift_and_scores(upstream):
    upstream, model = upstream
    state = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    scores, drift = measure_backbone(state, upstream)
    assert {k: scores[k] for k in upstream.scores} == pytest.approx(
        upstream.scores)
    # The pre-trained backbone itself: re-estimated BN statistics equal the
    # reference's, its features are the pre-trained ones.
    assert scores['head_reest'] == scores['head_reest_before']
    assert scores['cka'] == pytest.approx(1.0)
    assert [r['layer'] for r in drift] == [
        'stem', 'layer1.0', 'layer1.1', 'layer2.0', 'layer2.1', 'layer3.0',
        'layer3.1', 'layer4.0', 'layer4.1'
    ]
    assert all(r['drift'] == 0 for r in drift)
    # Move the stem by 10% and one block by 20%.
    state['conv1.weight'] *= 1.1
    for name in state:
        if name.startswith('layer3.1.') and 'running' not in name \
                and 'num_batches' not in name:
            state[name] = state[name] * 1.2
    _, drift = measure_backbone(state, upstream)
    by_layer = {r['layer']: r['drift'] for r in drift}
    w = model.backbone.conv1.weight.detach().double()
    bn1 = model.backbone.bn1
    stem_norm = (w.square().sum() +
                 bn1.weight.detach().double().square().sum() +
                 bn1.bias.detach().double().square().sum()).sqrt()
    assert by_layer['stem'] == pytest.approx(
        float(0.1 * w.norm() / stem_norm), rel=1e-6)
    assert by_layer['layer3.1'] == pytest.approx(0.2, rel=1e-6)
    assert sum(v > 0 for v in by_layer.values()) == 2


def test_report_table_and_plot(tmp_path):
    drift = [
        dict(depth=0, layer='stem', drift=0.02, params=10),
        dict(depth=1, layer='layer1.0', drift=0.04, params=20)
    ]
    run = dict(
        metrics={
            'coco/bbox_mAP': 0.412,
            'coco/segm_mAP': 0.305
        },
        scores=dict(knn=0.99, probe=0.985, head=0.7),
        drift=drift)
    olor = dict(run, drift=[dict(r, drift=r['drift'] / 2) for r in drift])
    table = demo_tables(
        dict(AdamW=run, OLOR=olor),
        dict(knn=1.0, probe=1.0, head=1.0),
        rollback={
            'stem': 0.03,
            'layer1.0': 0.015
        })
    lines = table.splitlines()
    assert lines[0].split() == [
        'method', 'bbox', 'AP', 'segm', 'AP', 'kNN', 'probe', 'old', 'head',
        'drift', 'stem', 'drift', 'mean'
    ]
    assert lines[2].split() == [
        'pre-trained', '-', '-', '100.0', '100.0', '100.0', '0', '0'
    ]
    assert lines[3].split() == [
        'AdamW', '41.2', '30.5', '99.0', '98.5', '70.0', '0.0200', '0.0300'
    ]
    assert lines[4].split()[-2:] == ['0.0100', '0.0150']
    assert lines[-1].split() == ['layer1.0', '0.0400', '0.0200', '0.015']
    out = str(tmp_path / 'drift.png')
    plot_drift(
        dict(AdamW=drift, OLOR=olor['drift']), out, rollback={'stem': 0.03})
    assert osp.getsize(out) > 1000
    assert format_table(['a', 'b'], [[1, 22]]).splitlines() == \
        ['a   b', '-  --', '1  22']



def test_demo_configs_differ_only_in_the_optimizer():
    olor, adamw = (Config.fromfile(DEMO_CONFIGS[k]) for k in ('olor', 'adamw'))
    assert olor.custom_hooks == [dict(type='OLORDriftHook', interval=25)]
    for key in ('model', 'train_dataloader', 'val_dataloader', 'val_evaluator',
                'train_cfg', 'param_scheduler', 'custom_hooks',
                'default_hooks'):
        assert olor.get(key) == adamw.get(key), key
    assert olor.optim_wrapper.optimizer.type == 'OLORAdamW'
    assert adamw.optim_wrapper.optimizer.type == 'AdamW'
    for key in ('lr', 'betas', 'weight_decay'):
        assert olor.optim_wrapper.optimizer[key] == \
            adamw.optim_wrapper.optimizer[key]
    assert 'rollback' not in adamw.optim_wrapper.paramwise_cfg
    backbone = olor.model.backbone
    assert backbone.init_cfg.type == 'Pretrained'
    assert backbone.init_cfg.prefix == 'backbone.'
    assert (backbone.depth, backbone.base_channels) == (18, 16)


def test_demo_config_rollback_by_layer():
    cfg = Config.fromfile(DEMO_CONFIGS['olor'])
    r = cfg.optim_wrapper.paramwise_cfg.rollback
    model = build_model(cfg)
    rows = rollback_by_layer(cfg, model)
    assert [row['layer']
            for row in rows][:3] == ['stem', 'layer1.0', 'layer1.1']
    for depth, row in enumerate(rows):  # nothing frozen in the demo
        assert row['rollback'] == pytest.approx(
            rollback_by_depth(depth, 8, r.max, r.min, r.power))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'win32', reason='POSIX paths')
def test_demo_runs_end_to_end(tmp_path):
    """The whole demo at toy size: 2 upstream steps, 2 iterations per
    fine-tuning, 4 + 2 scenes."""
    work_dir = tmp_path / 'demo'
    proc = subprocess.run([
        sys.executable, 'tools/demo.py', '--work-dir',
        str(work_dir), '--iters', '2', '--upstream-steps', '2', '--scenes',
        '4', '2'
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f'work dir: {work_dir}'
    assert any(line.startswith('AdamW ') for line in lines)
    assert any(line.startswith('OLOR-AdamW ') for line in lines)
    report = work_dir / 'report'
    for name in ('drift_by_layer.png', 'rollback_by_layer.png', 'report.txt',
                 'results.json'):
        assert (report / name).stat().st_size > 0, name
    with open(report / 'results.json') as f:
        results = json.load(f)
    assert set(results['runs']) == {'AdamW', 'OLOR-AdamW'}
    for run in results['runs'].values():
        assert 'coco/bbox_mAP' in run['metrics']
        assert len(run['drift']) == 9
    # The drift hook ran in both fine-tunings.
    for key in ('adamw', 'olor'):
        log = next((work_dir / key).glob('*/*.log')).read_text()
        assert 'OLOR drift' in log
