# Copyright (c) mmolor contributors. All rights reserved.
"""A layer-wise lr-decay config through the real tools, on files on disk.

The shipped UPerNet ConvNeXt-B config (OLOR over mmseg's
LearningRateDecayOptimizerConstructor) trains, resumes and tests through
`tools/train.py` / `tools/test.py` in subprocesses, on a tiny ADE20K
written by :mod:`benchmarks.datasets`. Overridden: the size (a ConvNeXt of
1+1+2+1 blocks and 8..64 channels, 64x64 images, 4 iterations), data
paths, no pretrained weights, no stochastic depth or dropout (a resume
does not restore the RNG they draw from), and AmpOptimWrapper ->
OptimWrapper (mmengine's AmpOptimWrapper needs a GPU); the optimizer,
its lr decay and the review (SPD's, one strength over the backbone) are
the config's.
"""
import os.path as osp

import pytest

from test_e2e import (ade_overrides, resume_matches_full, test_metrics,
                      train, write_config)

from benchmarks.datasets import write_ade20k

# Trains, resumes and tests through the tools.
pytestmark = pytest.mark.slow

CONFIG = ('configs/convnext/'
          'convnext-base_upernet_olor-adamw_8xb2-amp-160k_ade20k-512x512.py')

# The config's optim wrapper as an OptimWrapper (AMP off on the CPU):
# constructor, optimizer and paramwise_cfg are the shipped ones.
NO_AMP = '''
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor={{_base_.optim_wrapper.constructor}},
    optimizer={{_base_.optim_wrapper.optimizer}},
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}})
'''
TINY = (", arch=dict(_delete_=True, depths=[1, 1, 2, 1], "
        "channels=[8, 16, 32, 64]), "
        "drop_path_rate=0.0), "
        "decode_head=dict(in_channels=[8, 16, 32, 64], channels=16, "
        "dropout_ratio=0.0), "
        "auxiliary_head=dict(in_channels=32, channels=8, dropout_ratio=0.0")


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    write_ade20k(str(root), dict(train=4, val=2), image_size=(64, 64))
    return str(root)


def test_convnext_llrd_trains_resumes_exactly_and_tests(ade, tmp_path):
    """4 iterations at once, and 2 + `--resume` 2: the same weights and the
    same optimizer state (anchors, AdamW moments, the lr-decay groups); then
    tools/test.py gives an mIoU."""
    body = ade_overrides(ade, max_iters=4, deterministic=True,
                         ckpt_interval=2, model_extra=TINY) + NO_AMP
    config = write_config(tmp_path / 'cfg.py', CONFIG, body)
    log = train(config, tmp_path / 'full')
    assert 'OLOR rollback:' in log
    assert 'param groups: LearningRateDecayOptimizerConstructor' in log
    opt_full = resume_matches_full(config, tmp_path)

    # The recipe's stage-wise lr decay and the config's review are both in
    # the trained optimizer: lr_scale 0.9 ** (13 - stage id) (mmseg's rule
    # for num_layers 12), and SPD's review at strength 1 on every backbone
    # group, none on the rest.
    groups = opt_full['param_groups']
    assert {round(g['lr_scale'], 12) for g in groups} == {
        round(0.9**(13 - i), 12) for i in (0, 1, 2, 3, 4, 13)}
    backbone = [g for g in groups
                if all(n.startswith('backbone.') for n in g['param_names'])]
    assert {(g['rollback'], g['review']) for g in backbone} == {(1.0, 'spd')}
    assert {g['rollback'] for g in groups if g not in backbone} == {0.0}
    anchored = sum('anchor' in opt_full['state'][i] for g in backbone
                   if g['rollback'] > 0 for i in g['params'])
    assert anchored > 20

    metrics = test_metrics(config, str(tmp_path / 'full' / 'iter_4.pth'),
                           tmp_path / 'test')
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert osp.exists(tmp_path / 'full' / 'iter_2.pth')
