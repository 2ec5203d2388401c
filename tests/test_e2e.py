# Copyright (c) mmolor contributors. All rights reserved.
"""The shipped configs through the real tools, on real files on disk.

Each run is `tools/train.py` / `tools/test.py` / `tools/dist_train.sh` in a
subprocess, as a user starts them, on a tiny COCO / ADE20K dataset written
by :mod:`benchmarks.datasets`. Configs are the shipped ones, overridden only in
size (images, iterations, workers), data paths and pretrained weights.
"""
import glob
import json
import os
import os.path as osp
import sys

import pytest
import torch

from benchmarks.datasets import write_ade20k, write_coco
from test_zero import run as zero_run

# Trains and tests through tools/train.py and tools/test.py.
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run(args, timeout=900, **env_extra):
    """:func:`test_zero.run` with a longer limit (these train real
    detectors and segmentors)."""
    return zero_run(args, timeout, **env_extra)


def train(config, work_dir, *extra):
    return run([sys.executable, 'tools/train.py', config, '--work-dir',
                str(work_dir), *extra])


def test_metrics(config, checkpoint, work_dir):
    """Run tools/test.py; return the metrics it logged."""
    run([sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
         str(work_dir)])
    (path, ) = glob.glob(osp.join(str(work_dir), '*', '*.json'))
    with open(path) as f:
        return json.load(f)


test_metrics.__test__ = False  # a helper, not a test


def write_config(path, base, body):
    path.write_text(f"_base_ = '{osp.join(ROOT, base)}'\n{body}")
    return str(path)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    write_coco(str(root), dict(train=4, val=2), image_size=(96, 128))
    return str(root)


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    write_ade20k(str(root), dict(train=4, val=2), image_size=(64, 64))
    return str(root)


def coco_overrides(root, init_cfg=None, scale=(128, 96), epochs=1):
    """Tiny images and data paths; model, optimizer and schedule stay.

    A detector two iterations old scores every box below mmdet's test
    threshold (0.05): keep all boxes so COCO evaluation has results.
    """
    return f'''
model = dict(backbone=dict(init_cfg={init_cfg!r}),
             test_cfg=dict(rcnn=dict(score_thr=0.0)))
data_root = '{root}/'
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale={scale}, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')]))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale={scale}, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor'))]
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval={epochs})
default_hooks = dict(logger=dict(interval=1))
'''


def test_faster_rcnn_train_then_test_with_local_pretrained(coco, tmp_path):
    """COCO detection, OLOR-SGD; the backbone loads a local checkpoint via
    init_cfg Pretrained and the anchors are exactly that checkpoint."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine import Config
    from mmengine.optim import build_optim_wrapper
    register_all_modules()
    base = 'configs/faster_rcnn/faster-rcnn_r50_fpn_olor-sgd_1x_coco.py'
    cfg = Config.fromfile(osp.join(ROOT, base))
    torch.manual_seed(123)
    # Unlike any random init (norm weights start at exactly 1, biases at 0).
    pretrained = {k: v + 0.01 * torch.randn_like(v)
                  if v.is_floating_point() else v for k, v in
                  MODELS.build(cfg.model.backbone).state_dict().items()}
    ckpt = str(tmp_path / 'backbone.pth')
    torch.save(pretrained, ckpt)
    config = write_config(
        tmp_path / 'cfg.py', base,
        coco_overrides(coco, dict(type='Pretrained', checkpoint=ckpt)))
    log = train(config, tmp_path / 'train')
    assert 'OLOR rollback:' in log and 'structural blocks' in log
    final = str(tmp_path / 'train' / 'epoch_1.pth')
    metrics = test_metrics(config, final, tmp_path / 'test')
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0

    # Rebuild the model and optimizer from the config; load the checkpoint.
    cfg = Config.fromfile(config)
    model = MODELS.build(cfg.model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    state = torch.load(final, map_location='cpu', weights_only=False)
    ow.load_state_dict(state['optimizer'])
    random_init = MODELS.build(cfg.model.backbone).state_dict()
    rollback = {p: g['rollback'] for g in ow.optimizer.param_groups
                for p in g['params']}
    anchored = 0
    for name, p in model.backbone.named_parameters():
        state = ow.optimizer.state[p]
        if not p.requires_grad:  # frozen stem + layer1: not optimized
            assert p not in rollback and len(state) == 0
        elif rollback[p] == 0:  # the last block: r_min = 0, no anchor
            assert name.startswith('layer4.2.') and 'anchor' not in state
        else:
            assert torch.equal(state['anchor'], pretrained[name]), name
            assert not torch.equal(state['anchor'], random_init[name])
            anchored += 1
    assert anchored > 100
    assert all('anchor' not in ow.optimizer.state[p]
               for p in model.roi_head.parameters())


def test_mask_rcnn_train_then_test_gives_bbox_and_segm_ap(coco, tmp_path):
    base = 'configs/mask_rcnn/mask-rcnn_r50_fpn_olor-adamw_1x_coco.py'
    config = write_config(tmp_path / 'cfg.py', base, coco_overrides(coco))
    log = train(config, tmp_path / 'train')
    assert 'coco/segm_mAP' in log  # the end-of-epoch validation
    metrics = test_metrics(config, str(tmp_path / 'train' / 'epoch_1.pth'),
                           tmp_path / 'test')
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0, key


def ade_overrides(root, max_iters, size=64, deterministic=False,
                  ckpt_interval=None, model_extra='', plain_bn=False):
    """Tiny crops and data paths; with ``plain_bn`` BN instead of SyncBN in
    every module (gloo CPU runs cannot sync BN)."""
    if plain_bn:
        bn = "norm_cfg=dict(type='BN', requires_grad=True)"
        model_extra += (f', {bn}), decode_head=dict({bn}), '
                        f'auxiliary_head=dict({bn}')
    aug = '' if deterministic else f'''
        dict(type='RandomResize', scale=({2 * size}, {size}),
             ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type='RandomCrop', crop_size=({size}, {size}),
             cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'),'''
    if deterministic:  # no random augmentation, data in order
        aug = f'''
        dict(type='Resize', scale=({size}, {size}), keep_ratio=False),'''
    return f'''
data_root = '{root}'
crop_size = ({size}, {size})
model = dict(data_preprocessor=dict(size=crop_size), pretrained=None,
             backbone=dict(init_cfg=None{model_extra}))
randomness = dict(seed=0)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(shuffle={not deterministic}),
    dataset=dict(data_root=data_root, pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),{aug}
        dict(type='PackSegInputs')]))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({2 * size}, {size}), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={ckpt_interval or max_iters}))
'''


UPERNET = 'configs/upernet/upernet_r50_olor-sgd_4xb4-80k_ade20k-512x512.py'


def gloo_upernet_config(tmp_path, extra=''):
    """The shipped UPerNet config on 4 tiny ADE20K-format images, 2
    iterations, plain BN, then the config lines ``extra``: for the
    multi-process runs."""
    from benchmarks.datasets import write_ade20k
    root = str(tmp_path / 'ade')
    write_ade20k(root, dict(train=4, val=2), image_size=(64, 64))
    body = ade_overrides(root, max_iters=2, plain_bn=True) + extra
    return write_config(tmp_path / 'cfg.py', UPERNET, body)


def test_upernet_ade20k_train_then_test_gives_miou(ade, tmp_path):
    config = write_config(tmp_path / 'cfg.py', UPERNET,
                          ade_overrides(ade, max_iters=2))
    train(config, tmp_path / 'train')
    metrics = test_metrics(config, str(tmp_path / 'train' / 'iter_2.pth'),
                           tmp_path / 'test')
    assert 0.0 <= metrics['mIoU'] <= 100.0


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def resume_matches_full(config, tmp_path):
    """After ``tmp_path/full`` trained 4 iterations at once: train 2, then
    ``--resume`` 2 in ``tmp_path/part``, and check both end with the same
    weights and optimizer state. Returns the full run's optimizer state."""
    train(config, tmp_path / 'part', '--cfg-options', 'train_cfg.max_iters=2')
    log = train(config, tmp_path / 'part', '--resume')
    assert 'resumed' in log.lower()
    full = _load(str(tmp_path / 'full' / 'iter_4.pth'))
    part = _load(str(tmp_path / 'part' / 'iter_4.pth'))
    assert full['meta']['iter'] == part['meta']['iter'] == 4
    for key, value in full['state_dict'].items():
        assert torch.equal(value, part['state_dict'][key]), key
    opt_full, opt_part = full['optimizer'], part['optimizer']
    assert opt_full['param_groups'] == opt_part['param_groups']
    for index, state in opt_full['state'].items():
        assert state.keys() == opt_part['state'][index].keys()
        for key, value in state.items():
            assert torch.equal(value, opt_part['state'][index][key]), key
    return opt_full


def test_resume_ends_where_the_uninterrupted_run_ends(ade, tmp_path):
    """Train 4 iterations at once, and 2 + `--resume` 2: same weights and
    the same optimizer state, anchors included. The PolyLR schedule ends at
    80k either way, so stopping at 2 changes nothing but the stop.

    Deterministic: no random augmentation and no dropout (checkpoints do
    not hold the RNG state that dropout draws from after a resume).
    """
    body = ade_overrides(
        ade, max_iters=4, deterministic=True, ckpt_interval=2,
        model_extra='), decode_head=dict(dropout_ratio=0.0), '
        'auxiliary_head=dict(dropout_ratio=0.0')
    config = write_config(tmp_path / 'cfg.py', UPERNET, body)
    train(config, tmp_path / 'full')
    optimizer = resume_matches_full(config, tmp_path)
    anchors = sum('anchor' in state for state in optimizer['state'].values())
    assert anchors > 100  # the backbone's parameters


def test_dist_train_two_cpu_processes(ade, tmp_path):
    """tools/dist_train.sh CONFIG 2: gloo on the CPU; both ranks finish with
    identical weights."""
    body = ade_overrides(ade, max_iters=2, plain_bn=True) + '''
custom_imports = dict(imports=['mmolor', 'e2e_hooks'])
custom_hooks = [dict(type='DumpRankWeightsHook')]
'''
    config = write_config(tmp_path / 'cfg.py', UPERNET, body)
    log = run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir',
               str(tmp_path / 'dist')], PORT=str(29500 + os.getpid() % 1000),
              PYTHON=sys.executable)
    assert 'gloo' in log
    w0 = _load(str(tmp_path / 'dist' / 'weights_rank0.pth'))
    w1 = _load(str(tmp_path / 'dist' / 'weights_rank1.pth'))
    assert w0.keys() == w1.keys() and len(w0) > 100
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    checkpoint = str(tmp_path / 'dist' / 'iter_2.pth')
    # tools/dist_test.sh CONFIG CHECKPOINT 2 splits the validation images
    # between the ranks and scores what they collect: tools/test.py's mIoU.
    run(['bash', 'tools/dist_test.sh', config, checkpoint, '2',
         '--work-dir', str(tmp_path / 'dist_test')],
        PORT=str(29500 + os.getpid() % 1000), PYTHON=sys.executable)
    (path, ) = glob.glob(str(tmp_path / 'dist_test' / '*' / '*.json'))
    with open(path) as f:
        dist_metrics = json.load(f)
    metrics = test_metrics(config, checkpoint, tmp_path / 'test')
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert dist_metrics[key] == metrics[key], key



def test_users_own_mmdet_config_with_mmdets_own_tools(coco, tmp_path):
    """A user's existing mmdet config plus the README's OLOR lines, trained
    and resumed with mmdet's own tools/train.py: `custom_imports` of mmolor
    is all it takes (registries and checkpoint loading on torch >= 2.6)."""
    import mmdet
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                           'train.py')
    body = coco_overrides(coco, epochs=2) + '''
custom_imports = dict(imports=['mmolor'], allow_failed_imports=False)
optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer=dict(type='OLORSGD'),
    paramwise_cfg=dict(rollback=dict(max=0.01, min=0.0, power=1.0)))
'''
    config = tmp_path / 'cfg.py'
    config.write_text("_base_ = 'mmdet::faster_rcnn/"
                      "faster-rcnn_r50_fpn_1x_coco.py'\n" + body)
    work_dir = str(tmp_path / 'work')
    run([sys.executable, mmdet_train, str(config), '--work-dir', work_dir,
         '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=2'])
    log = run([sys.executable, mmdet_train, str(config), '--work-dir',
               work_dir, '--resume'])
    assert 'resumed epoch: 1' in log
    first, second = (_load(osp.join(work_dir, f'epoch_{e}.pth'))
                     for e in (1, 2))
    assert second['meta']['epoch'] == 2
    # The anchors came back from the checkpoint: not re-taken at resume.
    anchors = [(i, s['anchor']) for i, s in
               first['optimizer']['state'].items() if 'anchor' in s]
    assert len(anchors) > 100
    for index, anchor in anchors:
        assert torch.equal(anchor,
                           second['optimizer']['state'][index]['anchor'])
