# Copyright (c) mmolor contributors. All rights reserved.
"""mmolor.evaluation.upstream_retention and its command line
tools/analysis_tools/upstream_retention.py on a real mmpretrain
classifier: a tiny ResNet trained a few iterations by mmengine's Runner on
a generated image folder, and detector checkpoints holding its backbone
(mmdet's ResNet, FPN and RPN head), unchanged, perturbed, renamed, resized
and refused."""
import argparse
import copy
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

import mmolor  # noqa: F401  checkpoint loading on torch >= 2.6
from mmolor.compat.checkpoint import UntrustedCheckpointError
from mmolor.evaluation import upstream_retention

# Trains an upstream classifier; runs the tool.
pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'upstream_retention.py')

# A ResNet-18 at an eighth of the width; mmdet's ResNet takes the same
# arguments and has the same parameter names.
BACKBONE = dict(type='ResNet', depth=18, stem_channels=8, base_channels=8)


def write_folder_dataset(root, classes=3, per_class=4, size=32, seed=0):
    """mmpretrain's CustomDataset layout: ``root/<class>/<n>.png``; class
    ``c`` is noise around a colour of its own."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(osp.join(root, f'class{c}'))
        colour = np.zeros(3)
        colour[c % 3] = 200
        for n in range(per_class):
            img = colour + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                osp.join(root, f'class{c}', f'{n}.png'))
    return root


def classifier_config(data_root, work_dir, backbone=BACKBONE):
    """A tiny mmpretrain classifier, its data and a 30-iteration SGD run."""
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    loader = dict(
        batch_size=4,
        num_workers=0,
        dataset=dict(
            type='CustomDataset', data_root=data_root, pipeline=pipeline))
    return Config(
        dict(
            default_scope='mmpretrain',
            model=dict(
                type='ImageClassifier',
                backbone=backbone,
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=3,
                    in_channels=64,
                    loss=dict(type='CrossEntropyLoss'),
                    topk=(1, ))),
            data_preprocessor=dict(
                num_classes=3,
                mean=[127.5] * 3,
                std=[127.5] * 3,
                to_rgb=True),
            train_dataloader=dict(
                loader, sampler=dict(type='InfiniteSampler', shuffle=True)),
            test_dataloader=dict(
                loader, sampler=dict(type='DefaultSampler', shuffle=False)),
            test_evaluator=dict(type='Accuracy', topk=(1, )),
            test_cfg=dict(),
            train_cfg=dict(by_epoch=False, max_iters=30),
            optim_wrapper=dict(
                optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=10),
                checkpoint=dict(
                    type='CheckpointHook', interval=30, by_epoch=False)),
            randomness=dict(seed=0),
            work_dir=work_dir))


def runner_test(cfg, checkpoint, name):
    """What mmpretrain's test tool prints for ``checkpoint``."""
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg)
    cfg.load_from = checkpoint
    cfg.experiment_name = name
    return Runner.from_cfg(cfg).test()


def build_mmdet(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg)


def det_state(backbone_state):
    """A Mask R-CNN-like state dict: mmdet's ResNet holding
    ``backbone_state`` (loaded strictly: the names match), FPN, RPN head."""
    resnet = build_mmdet(BACKBONE)
    resnet.load_state_dict(backbone_state, strict=True)
    parts = dict(
        backbone=resnet,
        neck=build_mmdet(
            dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16,
                 num_outs=5)),
        rpn_head=build_mmdet(
            dict(type='RPNHead', in_channels=16, feat_channels=16,
                 anchor_generator=dict(
                     type='AnchorGenerator', scales=[8],
                     ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]))))
    return {f'{part}.{k}': v for part, module in parts.items()
            for k, v in module.state_dict().items()}


def save_det(path, state, **meta):
    torch.save(dict(meta=dict(epoch=12, **meta), state_dict=state), path)
    return str(path)


def perturb_layer2(state):
    """Noise on the parameters of stage ``layer2`` only (weights and biases
    of its convs and norms; running statistics kept)."""
    gen = torch.Generator().manual_seed(0)
    out = dict(state)
    for key, value in state.items():
        if key.startswith('backbone.layer2.') and \
                key.endswith(('.weight', '.bias')):
            out[key] = value + 2 * value.std() * torch.randn(
                value.shape, generator=gen)
    return out


@pytest.fixture(scope='module')
def upstream(tmp_path_factory):
    """The tiny classifier trained 30 iterations: config and checkpoint."""
    from mmengine.runner import Runner
    tmp = tmp_path_factory.mktemp('upstream')
    data = write_folder_dataset(str(tmp / 'data'))
    cfg = classifier_config(data, str(tmp / 'train'))
    config = str(tmp / 'classifier.py')
    cfg.dump(config)
    train = copy.deepcopy(cfg)
    train.experiment_name = 'upstream_train'
    Runner.from_cfg(train).train()
    return dict(cfg=cfg, config=config, tmp=tmp,
                checkpoint=str(tmp / 'train' / 'iter_30.pth'))


def run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    return out


def test_upstream_and_detector_backbones(upstream, tmp_path):
    """Upstream metric = Runner.test() of the checkpoint; an unchanged
    detector backbone scores exactly that, with zero drift; a perturbed one
    scores what Runner.test() gives a classifier holding it, with the drift
    computed by hand."""
    up_state = torch.load(upstream['checkpoint'],
                          weights_only=False)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in up_state.items()
                if k.startswith('backbone.')}
    same = det_state(backbone)
    perturbed = perturb_layer2(same)
    same_ckpt = save_det(tmp_path / 'det_same.pth', same)
    perturbed_ckpt = save_det(tmp_path / 'det_perturbed.pth', perturbed)

    work_dir = str(tmp_path / 'work')
    out = run_tool(upstream['config'], upstream['checkpoint'], same_ckpt,
                   perturbed_ckpt, '--work-dir', work_dir, '--cfg-options',
                   'test_dataloader.batch_size=3')
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == osp.join(work_dir, 'upstream_retention.json')
    with open(lines[-1]) as f:
        result = json.load(f)
    assert 'Epoch(test)' in out.stderr + out.stdout  # evaluation progress
    assert os.listdir(work_dir).count('upstream_retention.json') == 1
    assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]

    want = runner_test(upstream['cfg'], upstream['checkpoint'], 'reference')
    assert result['upstream'] == dict(checkpoint=upstream['checkpoint'],
                                      metrics=want)
    assert want['accuracy/top1'] > 50  # the classifier learnt its task
    row_same, row_perturbed = result['checkpoints']
    assert row_same['checkpoint'] == same_ckpt
    assert row_same['metrics'] == want
    assert row_same['drift']['mean'] == 0.0
    stages = [s['stage'] for s in row_same['drift']['stages']]
    assert stages == ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    assert all(s['drift'] == 0.0 for s in row_same['drift']['stages'])

    # A classifier checkpoint holding the perturbed backbone, tested as
    # mmpretrain's test tool tests it.
    swapped = dict(up_state)
    swapped.update({k: v for k, v in perturbed.items()
                    if k.startswith('backbone.')})
    classifier = str(tmp_path / 'classifier_perturbed.pth')
    torch.save(dict(meta=dict(), state_dict=swapped), classifier)
    want_perturbed = runner_test(upstream['cfg'], classifier, 'perturbed')
    assert row_perturbed['metrics'] == want_perturbed
    assert want_perturbed != want

    keys = [k for k in perturbed if k.startswith('backbone.layer2.')
            and k.endswith(('.weight', '.bias'))]
    diff = sum(float((perturbed[k].double() - up_state[k].double()).square()
                     .sum()) for k in keys)
    ref = sum(float(up_state[k].double().square().sum()) for k in keys)
    drift = {s['stage']: s['drift'] for s in row_perturbed['drift']['stages']}
    assert drift['layer2'] == pytest.approx((diff / ref)**0.5, rel=1e-12)
    assert [drift[s] for s in stages if s != 'layer2'] == [0.0] * 4
    assert row_perturbed['drift']['mean'] == pytest.approx(
        drift['layer2'] / 5, rel=1e-12)

    # The table: one row per set of weights, metric, change and drift.
    header = next(i for i, line in enumerate(lines)
                  if line.startswith('checkpoint '))
    assert lines[header].split() == [
        'checkpoint', 'accuracy/top1', 'change', 'accuracy/top1', 'drift',
        'mean'] + [x for s in stages for x in ('drift', s)]
    rows = lines[header + 2:-1]
    assert rows[0].split()[:3] == [
        'upstream:', upstream['checkpoint'], f"{want['accuracy/top1']:.2f}"]
    change = want_perturbed['accuracy/top1'] - want['accuracy/top1']
    assert rows[2].split()[:4] == [
        perturbed_ckpt, f"{want_perturbed['accuracy/top1']:.2f}",
        f'{change:+.2f}', f"{row_perturbed['drift']['mean']:.4f}"]


def test_prefix_and_trusted_checkpoint(upstream, tmp_path):
    """--prefix names another backbone prefix; a checkpoint that torch
    refuses is refused with the safe loader's message, and loads with
    --trust-checkpoint."""
    up_state = torch.load(upstream['checkpoint'],
                          weights_only=False)['state_dict']
    state = {k.replace('backbone.', 'encoder.', 1): v
             for k, v in up_state.items()}
    ckpt = save_det(tmp_path / 'untrusted.pth', state,
                    args=argparse.Namespace(lr=0.1))
    work_dir = str(tmp_path / 'work')
    with pytest.raises(UntrustedCheckpointError) as error:
        upstream_retention(upstream['config'], upstream['checkpoint'],
                           [ckpt], prefix='encoder.', work_dir=work_dir)
    message = str(error.value)
    assert f'Checkpoint {ckpt} was not loaded' in message
    assert 'torch refuses the global argparse.Namespace' in message
    assert f'--trust-checkpoint {ckpt}' in message
    assert not osp.exists(work_dir)

    out = run_tool(upstream['config'], upstream['checkpoint'], ckpt,
                   '--prefix', 'encoder.', '--work-dir', work_dir,
                   '--trust-checkpoint', ckpt)
    with open(out.stdout.strip().splitlines()[-1]) as f:
        result = json.load(f)
    (row, ) = result['checkpoints']
    assert row['metrics'] == result['upstream']['metrics']
    assert row['drift']['mean'] == 0.0


def _fails(args, work_dir, *expected):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        upstream_retention(args[0], args[1], args[2:], work_dir=work_dir)
    for text in expected:
        assert text in str(error.value), str(error.value)
    assert not osp.exists(osp.join(work_dir, 'upstream_retention.json'))


def test_bad_inputs_fail_before_anything_is_written(upstream, tmp_path):
    up_state = torch.load(upstream['checkpoint'],
                          weights_only=False)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in up_state.items()
                if k.startswith('backbone.')}
    det = det_state(backbone)
    work_dir = str(tmp_path / 'work')
    base = [upstream['config'], upstream['checkpoint']]

    renamed = save_det(tmp_path / 'renamed.pth', {
        k.replace('backbone.', 'bkbone.', 1): v for k, v in det.items()})
    _fails(base + [renamed], work_dir,
           f"{renamed}: no entries under the prefix 'backbone.'",
           "top-level keys: ['bkbone', 'neck', 'rpn_head']", '--prefix')

    # A detector whose ResNet is twice as wide past the stem.
    wide = build_mmdet(dict(BACKBONE, base_channels=16)).state_dict()
    wide_ckpt = save_det(tmp_path / 'wide.pth',
                         {f'backbone.{k}': v for k, v in wide.items()})
    _fails(base + [wide_ckpt], work_dir,
           f"{wide_ckpt}: backbone parameter 'layer1.0.conv1.weight' has "
           'shape (16, 8, 3, 3), the upstream backbone\'s (8, 8, 3, 3)')

    lacking = dict(det)
    del lacking['backbone.layer3.1.bn2.weight']
    lacking_ckpt = save_det(tmp_path / 'lacking.pth', lacking)
    _fails(base + [lacking_ckpt], work_dir,
           f'{lacking_ckpt}: its backbone lacks 1 of the upstream',
           "'layer3.1.bn2.weight'")

    detector = tmp_path / 'detector.py'
    detector.write_text(f"_base_ = '{upstream['config']}'\n"
                        "model = dict(_delete_=True, type='MaskRCNN')\n")
    _fails([str(detector), upstream['checkpoint'], renamed], work_dir,
           f"{detector}: model type 'MaskRCNN' is not an mmpretrain "
           'ImageClassifier')

    missing = str(tmp_path / 'missing.pth')
    _fails(base + [missing], work_dir, f'{missing} can not be found')
    # A config inside mmpretrain is found; the checkpoint is checked next.
    _fails(['mmpretrain::convnext/convnext-tiny_32xb128_in1k.py', missing,
            renamed], work_dir, f'{missing} can not be found')
    # The first bad checkpoint stops the run, before any evaluation.
    assert not osp.exists(work_dir)
