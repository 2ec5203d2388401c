# Copyright (c) mmolor contributors. All rights reserved.
"""The shipped configs follow the confirmatory study (benchmarks/PROTOCOL.md,
section 6), read from its results: each config's review settings are those
of the method the protocol's rule picks from its cell's runs
(``benchmarks.report.protocol_choice``, as the report's start-here table),
made as the benchmark makes that method (``benchmarks.tasks.method_config``);
and a config that sets them cites, in its header, the choice's differences
to AdamW as the report prints them."""
import glob
import json
import os.path as osp

import pytest
from mmengine import Config

from benchmarks.report import protocol_choice
from benchmarks.stats import PRIMARY_METRICS
from benchmarks.tasks import method_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'v2')
# The cell each task family's configs follow (PROTOCOL.md, section 6).
CELL_OF_SCOPE = dict(mmpretrain=('cls', 'related-few'),
                     mmseg=('seg', 'related-many'),
                     mmdet=('det', 'related-many'))
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py'))
    if osp.basename(osp.dirname(p)) not in ('_base_', 'demo'))


def choice_of(task, regime):
    """The protocol's choice for a cell, from its confirmatory JSON; skips
    while the cell has no confirmatory runs."""
    path = osp.join(RESULTS, f'{task}_{regime}.json')
    if not osp.exists(path):
        pytest.skip(f'{task} {regime}: no confirmatory results yet '
                    f'({osp.relpath(path, ROOT)})')
    with open(path) as f:
        data = json.load(f)
    return protocol_choice(data['paired'], data['results'], task, regime)


def review_settings(cfg):
    """What a config sets of the review: the rollback, L2-SP and whether
    the rollback follows the lr (the optimizers' default: it does)."""
    wrapper = cfg.optim_wrapper
    paramwise = wrapper.get('paramwise_cfg', {})

    def plain(value):
        return None if value is None else Config(dict(v=value)).to_dict()['v']

    return dict(
        rollback=plain(paramwise.get('rollback')),
        l2sp=plain(paramwise.get('l2sp')),
        rollback_follows_lr=wrapper.optimizer.get('rollback_follows_lr',
                                                  True))


def header(path):
    """The config's leading comment, one line of words."""
    words = []
    with open(osp.join(ROOT, path)) as f:
        for line in f:
            if not line.startswith('#'):
                break
            words.append(line[1:].strip())
    return ' '.join(words)


def interval(row):
    return (f"{100 * row['mean_diff']:+.1f} [{100 * row['ci_low']:+.1f}, "
            f"{100 * row['ci_high']:+.1f}]")


def test_configs_are_found():
    scopes = {Config.fromfile(osp.join(ROOT, p)).default_scope
              for p in CONFIGS}
    assert scopes == set(CELL_OF_SCOPE), scopes


@pytest.mark.parametrize('path', CONFIGS)
def test_config_ships_its_cells_choice_and_cites_it(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    task, regime = CELL_OF_SCOPE[cfg.default_scope]
    choice = choice_of(task, regime)
    if choice is None:
        # No method kept more without a downstream cost: the recipe.
        assert cfg.optim_wrapper.get('paramwise_cfg', {}).get(
            'rollback') is None, path
        assert cfg.optim_wrapper.get('paramwise_cfg', {}).get(
            'l2sp') is None, path
        return
    assert choice['method'] not in ('llrd', 'olor+llrd'), (
        'this test compares the review settings only; a cell that chooses '
        'a layer-wise lr decay needs its lr multipliers checked too')
    plain = Config(dict(optim_wrapper=dict(
        optimizer=dict(type='AdamW'), paramwise_cfg=dict())))
    expected = review_settings(
        method_config(plain, task, choice['method'], choice['config']))
    assert review_settings(cfg) == expected, (path, choice['method'],
                                              choice['config'])
    with open(osp.join(ROOT, path)) as f:
        sets_review = 'paramwise_cfg' in f.read()
    if sets_review:  # configs over a sibling inherit its header's account
        text = header(path)
        for metric in PRIMARY_METRICS:
            assert interval(choice['rows'][metric]) in text, (path, metric)
