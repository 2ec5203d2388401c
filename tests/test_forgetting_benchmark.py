# Copyright (c) mmolor contributors. All rights reserved.
"""The forgetting benchmark: its statistics, its data, the method configs
of every task family built by the real frameworks, a tiny run of the whole
tool, and its interruption."""
import glob
import json
import os
import shutil
import re
import os.path as osp
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from mmengine.optim import build_optim_wrapper

import mmolor  # noqa: F401  registries
from benchmarks.datasets import (CROPS_LAYOUT, SEMANTIC_LAYOUT,
                                 compose_digits, load_digit_split,
                                 write_digit_crops, write_digit_scenes,
                                 write_semantic_masks)
from benchmarks import forgetting
from benchmarks.retention import linear_cka, reestimate_bn
from benchmarks.selection import GRID, select
from benchmarks.stats import (PAIRED_METRICS, PRIMARY_METRICS, holm, paired,
                              signflip_p, t_interval, t_test_p)
from benchmarks.tasks import (TASKS, has_test_split, llrd_keys,
                              method_config, task_config)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'forgetting_benchmark.py')


def test_t_interval_on_known_numbers():
    # 1..5: mean 3, sd sqrt(2.5); t(0.975, 4) = 2.776 (tables).
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445 * np.sqrt(2.5) / np.sqrt(5)
    assert mean == 3.0
    assert (low, high) == pytest.approx((3 - half, 3 + half), abs=1e-5)
    # n = 3: t(0.975, 2) = 4.303; sd of (1, 3, 2) is 1.
    mean, low, high = t_interval([1.0, 3.0, 2.0])
    assert (mean, low, high) == pytest.approx(
        (2.0, 2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)),
        abs=1e-5)
    assert t_interval([0.5]) == (0.5, None, None)


def test_signflip_p_enumerates_every_sign_pattern():
    # n = 5, all positive: only the observed pattern and its mirror are as
    # extreme, 2 / 32.
    assert signflip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == 2 / 32
    assert signflip_p([0.3] * 10) == 2 / 1024
    # 0.1 + 0.2 - 0.05 + 0.3 = 0.55: patterns with |sum| >= 0.55 are the
    # observed one, the one flipping -0.05 (0.65) and their mirrors.
    assert signflip_p([0.1, 0.2, -0.05, 0.3]) == 4 / 16
    assert signflip_p([1.0, -1.0, 2.0, -2.0]) == 1.0
    # Against a brute-force count over itertools' patterns.
    import itertools
    values = [0.7, -0.2, 0.4, 0.1, -0.5, 0.9, 0.3]
    observed = abs(sum(values))
    count = sum(
        abs(sum(s * v for s, v in zip(signs, values))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(values)))
    assert signflip_p(values) == count / 2**len(values)
    assert signflip_p([]) is None
    with pytest.raises(ValueError, match='n = 21'):
        signflip_p([1.0] * 21)


def test_t_test_p_matches_scipy():
    from scipy.stats import ttest_1samp
    values = [0.3, -0.1, 0.5, 0.2, 0.4]
    assert t_test_p(values) == pytest.approx(ttest_1samp(values, 0).pvalue)
    assert t_test_p([0.2]) is None
    assert t_test_p([0.0, 0.0]) == 1.0 and t_test_p([0.1, 0.1]) == 0.0


def test_holm_step_down():
    # Sorted 0.01, 0.03, 0.04 of m = 3 (None is no test): 3 * 0.01, then
    # max(0.03, 2 * 0.03), then max(0.06, 1 * 0.04); capped at 1.
    assert holm([0.04, None, 0.01, 0.03]) == pytest.approx(
        [0.06, None, 0.03, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []


def _entry(method, seed, down, head, config=None, task='cls',
           regime='shifted'):
    return dict(
        task=task,
        regime=regime,
        method=method,
        config=config or {},
        seed=seed,
        downstream=down,
        upstream_head_after=head)


def test_paired_differences_by_seed():
    results = [
        _entry('adamw', 0, 0.50, 0.60),
        _entry('adamw', 1, 0.40, 0.70),
        _entry('adamw', 2, 0.45, 0.65),
        _entry('olor', 0, 0.52, 0.90, dict(r_max=0.01)),
        _entry('olor', 1, 0.41, 0.80, dict(r_max=0.01)),
        _entry('olor', 2, 0.45, 0.95, dict(r_max=0.01)),
        # another regime: paired with its own AdamW run only
        _entry('adamw', 0, 0.30, 0.50, regime='unrelated'),
        _entry('olor', 0, 0.20, 0.55, dict(r_max=0.01), regime='unrelated'),
        _entry('olor', 1, 0.25, 0.60, dict(r_max=0.01), regime='unrelated'),
    ]
    rows = paired(results)
    assert [(r['regime'], r['metric']) for r in rows] == [
        ('shifted', 'downstream'), ('shifted', 'upstream_head_after'),
        ('unrelated', 'downstream'), ('unrelated', 'upstream_head_after')
    ]
    down, head, alone, _ = rows
    assert down['config'] == dict(r_max=0.01) and down['n'] == 3
    assert down['mean_diff'] == pytest.approx(0.01)  # (0.02 + 0.01 + 0) / 3
    half = 4.302653 * 0.01 / np.sqrt(3)  # sd of the diffs: 0.01
    assert (down['ci_low'], down['ci_high']) == pytest.approx(
        (0.01 - half, 0.01 + half), abs=1e-6)
    assert head['mean_diff'] == pytest.approx((0.3 + 0.1 + 0.3) / 3)
    assert alone['n'] == 1 and alone['mean_diff'] == pytest.approx(-0.1)
    assert alone['ci_low'] is None and alone['ci_high'] is None
    # Exact sign-flip p-values, Holm-adjusted within each (task, regime).
    assert down['p_signflip'] == 4 / 8  # diffs 0.02, 0.01, 0: 4 of 8
    assert head['p_signflip'] == 2 / 8
    assert down['p_t'] == pytest.approx(t_test_p([0.02, 0.01, 0.0]))
    assert (down['p_holm'], head['p_holm']) == pytest.approx(
        tuple(holm([0.5, 0.25])))
    assert alone['p_t'] is None and alone['p_holm'] == 1.0


def test_paired_compares_olor_with_its_pre_registered_best_peer():
    """Confirmatory runs name the cell's best peer: the chosen OLOR minus
    that peer, by seed, joins the cell's Holm family."""
    results = []
    for seed, (a, o, s) in enumerate([(0.5, 0.52, 0.56), (0.4, 0.43, 0.45),
                                      (0.45, 0.44, 0.50)]):
        for method, down, config in [('adamw', a, {}),
                                     ('olor', o, dict(r_max=0.01)),
                                     ('spd', s, dict(lam=1.0))]:
            results.append(
                dict(_entry(method, seed, down, 0.6 + seed / 10, config),
                     best_peer='spd'))
    rows = paired(results)
    assert [(r['method'], r['baseline'], r['metric']) for r in rows] == [
        ('olor', 'adamw', 'downstream'),
        ('olor', 'adamw', 'upstream_head_after'),
        ('spd', 'adamw', 'downstream'),
        ('spd', 'adamw', 'upstream_head_after'),
        ('olor', 'spd', 'downstream'),
        ('olor', 'spd', 'upstream_head_after'),
    ]
    peer = rows[4]
    assert peer['baseline_config'] == dict(lam=1.0)
    assert peer['mean_diff'] == pytest.approx((-0.04 - 0.02 - 0.06) / 3)
    assert peer['p_signflip'] == 2 / 8  # all three below 0
    # One family of six: Holm over every primary comparison of the cell.
    assert [r['p_holm'] for r in rows] == pytest.approx(
        holm([r['p_signflip'] for r in rows]))
    # Runs that name two peers, or two OLOR settings, are refused.
    with pytest.raises(ValueError, match='several best peers'):
        paired(results + [dict(results[0], best_peer='llrd', seed=9)])
    with pytest.raises(ValueError, match='one setting of each'):
        paired(results +
               [dict(results[1], config=dict(r_max=0.003), seed=9)])


def _confirmatory(gains):
    """Ten seeds of test-split runs: ``gains`` maps a method to its
    (downstream, retention) difference to AdamW, with seed noise."""
    results = []
    for seed in range(10):
        wobble = 0.001 * (seed % 3 - 1)
        for method, (down, keep) in dict(adamw=(0.0, 0.0), **gains).items():
            results.append(
                dict(task='cls', regime='related-few', method=method,
                     config={}, seed=seed, best_peer='spd',
                     test_downstream=0.8 + 0.01 * seed + down + wobble,
                     upstream_head_reest_after=0.7 + keep - wobble,
                     upstream_head_reest_before=0.9))
    return results


def test_protocol_choice_follows_section_6():
    from benchmarks.report import protocol_choice, start_here

    def choose(**methods):
        runs = _confirmatory(methods)
        rows = paired(runs)
        return protocol_choice(rows, runs, 'cls', 'related-few'), \
            start_here(rows, runs)

    # SPD keeps the most without a downstream cost; OLOR is measurably
    # below it: SPD. LLRD keeps more but costs downstream: not chosen.
    choice, table = choose(olor=(0.02, 0.02), spd=(0.05, 0.04),
                           llrd=(-0.03, 0.08))
    assert choice['method'] == 'spd'
    assert choice['rows']['upstream_head_reest_after']['mean_diff'] == \
        pytest.approx(0.04)
    assert '| cls, related-few | 10 | spd |' in table
    assert '| spd | +5.0 [' in table
    # OLOR not measurably below it (the same numbers): OLOR.
    choice, _ = choose(olor=(0.05, 0.04), spd=(0.05, 0.04))
    assert choice['method'] == 'olor'
    # Either review counts, also against a method that is not OLOR's best
    # peer (L2-SP keeps the most here; the runs name SPD as the peer).
    choice, _ = choose(olor=(0.02, 0.02), spd=(0.03, 0.03),
                       l2sp=(0.05, 0.06), **{'olor-spd': (0.05, 0.06)})
    assert choice['method'] == 'olor-spd'
    choice, _ = choose(olor=(0.02, 0.02), spd=(0.03, 0.03),
                       l2sp=(0.05, 0.06), **{'olor-spd': (0.05, 0.03)})
    assert choice['method'] == 'l2sp'
    # The comparisons that decided it: both reviews minus L2-SP, Holm
    # within the four.
    rows = {(p['method'], p['metric']): p for p in choice['olor_rows']}
    assert {p['baseline'] for p in choice['olor_rows']} == {'l2sp'}
    assert sorted(rows) == sorted(
        (m, k) for m in ('olor', 'olor-spd')
        for k in ('test_downstream', 'upstream_head_reest_after'))
    assert rows['olor-spd', 'upstream_head_reest_after']['mean_diff'] == \
        pytest.approx(-0.03)
    assert [p['p_holm'] for p in choice['olor_rows']] == pytest.approx(
        holm([p['p_signflip'] for p in choice['olor_rows']]))
    # Every retention gain costs downstream: the recipe, no review.
    choice, table = choose(olor=(-0.02, 0.02), spd=(-0.05, 0.04))
    assert choice is None
    assert 'the recipe, no review' in table
    # Without confirmatory cells there is no table.
    runs = [_entry('adamw', 0, 0.5, 0.6)]
    assert start_here(paired(runs), runs) == ''


def test_write_markdown_fills_the_blocks_a_file_has(tmp_path):
    from benchmarks.report import (MARKDOWN_BEGIN, MARKDOWN_END, START_BEGIN,
                                   START_END, write_markdown)
    both = tmp_path / 'both.md'
    both.write_text(f'a\n{START_BEGIN}old{START_END}\nb\n'
                    f'{MARKDOWN_BEGIN}old{MARKDOWN_END}\nc\n')
    write_markdown(str(both), 'REPORT', 'TABLE')
    assert both.read_text() == (
        f'a\n{START_BEGIN}\n\nTABLE\n\n{START_END}\nb\n'
        f'{MARKDOWN_BEGIN}\n\nREPORT\n\n{MARKDOWN_END}\nc\n')
    start_only = tmp_path / 'start.md'
    start_only.write_text(f'x {START_BEGIN}{START_END} y')
    write_markdown(str(start_only), 'REPORT', '')
    assert start_only.read_text() == (
        f'x {START_BEGIN}\n\nNo confirmatory cell yet.\n\n{START_END} y')
    new = tmp_path / 'new.md'
    write_markdown(str(new), 'REPORT', 'TABLE')
    assert new.read_text() == f'{MARKDOWN_BEGIN}\n\nREPORT\n\n' \
        f'{MARKDOWN_END}\n'


def test_the_stored_command_names_no_work_dir_of_the_machine():
    assert forgetting._without_work_dir(
        ['--seeds', '1', '--work-dir', '/tmp/x', '--jobs', '2']) == \
        ['--seeds', '1', '--work-dir', 'WORK_DIR', '--jobs', '2']
    assert forgetting._without_work_dir(['--work-dir=/tmp/x']) == \
        ['--work-dir=WORK_DIR']


def test_paired_pairs_the_runs_that_have_a_metric():
    results = [
        dict(_entry('adamw', 0, 0.5, 0.6), test_downstream=0.4),
        dict(_entry('adamw', 1, 0.4, 0.7)),  # no test split
        dict(_entry('olor', 0, 0.6, 0.6), test_downstream=0.45),
        dict(_entry('olor', 1, 0.5, 0.7), test_downstream=0.5),
    ]
    rows = paired(results, metrics=('downstream', 'test_downstream'))
    assert [(r['metric'], r['n']) for r in rows] == [('downstream', 2),
                                                     ('test_downstream', 1)]
    assert rows[1]['mean_diff'] == pytest.approx(0.05)


def test_crops_share_the_scenes_statistics(tmp_path):
    rng = np.random.default_rng(0)
    glyphs = load_digit_split((1, ), seed=0)['train'][0][:50]
    images = compose_digits(glyphs, 32, rng)
    assert images.shape == (50, 32, 32) and images.dtype == np.uint8
    # Noisy background below 48, ink up to the brightness range.
    assert np.median(images) < 48 and images.max() > 150
    assert 0 < (images == 0).mean() < 0.1
    with pytest.raises(ValueError, match='scale'):
        compose_digits(glyphs, 32, rng, scale=(0.5, 1.5))
    paths = write_digit_crops(
        str(tmp_path), classes=(3, 4, 5), num_images=dict(train=7, val=6),
        seed=0)
    for split, count in (('train', 7), ('val', 6)):
        lines = open(paths[split]).read().split('\n')[:-1]
        assert len(lines) == count
        labels = [int(line.split()[1]) for line in lines]
        assert labels[:3] == [0, 1, 2]  # classes in turn
        image = cv2.imread(
            osp.join(str(tmp_path), CROPS_LAYOUT[split][1],
                     lines[0].split()[0]))
        assert image.shape == (32, 32, 3)


def test_semantic_masks_are_the_instance_masks(tmp_path):
    from pycocotools.coco import COCO
    paths = write_digit_scenes(
        str(tmp_path), classes=(2, 7), num_images=dict(train=3, val=2),
        seed=1)
    folders = write_semantic_masks(str(tmp_path))
    assert set(folders) == {'train', 'val'}
    coco = COCO(paths['val'])
    for img in coco.loadImgs(coco.getImgIds()):
        label = cv2.imread(
            osp.join(str(tmp_path), SEMANTIC_LAYOUT['val'][1],
                     img['file_name']), cv2.IMREAD_UNCHANGED)
        assert label.shape == (img['height'], img['width'])
        expected = np.zeros_like(label)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            expected[coco.annToMask(ann) > 0] = ann['category_id']
        assert np.array_equal(label, expected)
        assert set(np.unique(label)) <= {0, 1, 2} and label.max() > 0


def _model(cfg, task):
    import importlib
    registry = importlib.import_module(
        f'{TASKS[task].scope}.registry').MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(TASKS[task].scope):
        return registry.build(cfg.model)


def _tuning_runs(scores, seeds=(0, 1)):
    """Runs of every GRID setting: scores[(method, index)] = (val
    downstream, old head), the same on every seed (default 0.5, 0.5)."""
    out = []
    for method, grid in GRID.items():
        for i, config in enumerate(grid):
            down, head = scores.get((method, i), (0.5, 0.5))
            out += [dict(_entry(method, s, down, head, config))
                    for s in seeds]
    return out


def test_select_follows_the_protocol_rule():
    scores = {
        ('adamw', 0): (0.60, 0.70),
        # olor: the best downstream (0) keeps less than AdamW's head: out;
        # of the two that qualify, the higher downstream (2).
        ('olor', 0): (0.70, 0.65), ('olor', 1): (0.55, 0.80),
        ('olor', 2): (0.58, 0.71),
        # l2sp: none qualifies: the highest old head (1).
        ('l2sp', 0): (0.50, 0.60), ('l2sp', 1): (0.40, 0.69),
        ('l2sp', 2): (0.62, 0.30),
        # llrd: a tie on downstream among qualified: the weaker (later).
        ('llrd', 0): (0.64, 0.75), ('llrd', 1): (0.64, 0.76),
        ('llrd', 2): (0.50, 0.90),
        ('spd', 1): (0.63, 0.70),
    }
    rows = {r['method']: r for r in select(_tuning_runs(scores))}
    assert rows['olor']['config'] == GRID['olor'][2]
    assert rows['olor']['qualified'] and not rows['l2sp']['qualified']
    assert rows['l2sp']['config'] == GRID['l2sp'][1]
    assert rows['llrd']['config'] == GRID['llrd'][1]
    assert rows['olor']['downstream'] == pytest.approx(0.58)
    # Best peer: the peer whose choice has the highest val downstream.
    assert {r['best_peer'] for r in rows.values()} == {'llrd'}
    assert all(r['missing'] == [] for r in rows.values())
    assert rows['olor']['seeds'] == [0, 1]


def test_select_names_missing_settings_and_cells_without_adamw():
    runs = [r for r in _tuning_runs({})
            if not (r['method'] == 'spd' and r['config'] == GRID['spd'][0]
                    and r['seed'] == 1)]
    rows = {r['method']: r for r in select(runs)}
    assert rows['spd']['missing'] == [GRID['spd'][0]]
    with pytest.raises(ValueError, match='no adamw tuning runs'):
        select([r for r in runs if r['method'] != 'adamw'])
    with pytest.raises(ValueError, match='l2sp: no setting'):
        select([r for r in runs if r['method'] != 'l2sp'])


def test_select_command_keeps_the_cells_asked_for(tmp_path, capsys):
    """`--select` with --tasks/--regimes chooses in those cells only (a
    cell elsewhere whose grid is not complete does not stop it), and
    refuses the flags it cannot use."""
    complete = _tuning_runs({('l2sp', 0): (0.7, 0.6)})
    partial = [
        dict(r, task='seg', regime='related-many') for r in _tuning_runs({})
        if r['config'] != GRID['spd'][0]
    ]
    path = tmp_path / 'tuning.json'
    path.write_text(json.dumps(dict(results=complete + partial)))
    with pytest.raises(SystemExit, match='lack grid settings'):
        forgetting.main(['--select', str(path)])
    capsys.readouterr()
    forgetting.main(['--select', str(path), '--tasks', 'cls', '--regimes',
                     'shifted', '--work-dir', str(tmp_path / 'sel')])
    rows = json.loads((tmp_path / 'sel' / 'selection.json').read_text())[
        'selection']
    assert {(r['task'], r['regime']) for r in rows} == {('cls', 'shifted')}
    assert {r['method']: r['config'] for r in rows}['l2sp'] == GRID['l2sp'][0]
    with pytest.raises(SystemExit, match='hold no runs'):
        forgetting.main(['--select', str(path), '--tasks', 'det'])
    for argv in (['--r-max', '0.1'], ['--tuning'], ['--jobs', '1']):
        with pytest.raises(SystemExit):
            forgetting.parse_args(['--select', str(path), *argv])
        err = capsys.readouterr().err
        assert f'{argv[0]} cannot apply' in err, (argv, err)


def test_test_split_leaves_train_and_val_as_they_were(tmp_path):
    """Adding the test split draws new scenes and crops after the others:
    train and val are byte for byte those written without it; test holds
    other images of the held-out digits."""
    import filecmp
    old, new = tmp_path / 'old', tmp_path / 'new'
    for root, sizes in ((old, dict(train=6, val=4)),
                        (new, dict(train=6, val=4, test=4))):
        write_digit_scenes(str(root), classes=(1, 2), num_images=sizes,
                           seed=3)
        write_semantic_masks(str(root))
        write_digit_crops(str(root), classes=(1, 2),
                          num_images=dict(sizes, train=8), seed=3)
    for rel in ('annotations/instances_train2017.json',
                'annotations/instances_val2017.json', 'crops/train.txt',
                'crops/val.txt'):
        assert filecmp.cmp(old / rel, new / rel, shallow=False), rel
    for folder in ('train2017', 'val2017', 'semantic_val2017', 'crops/val'):
        names = sorted(os.listdir(old / folder))
        assert names == sorted(os.listdir(new / folder))
        assert all(
            filecmp.cmp(old / folder / n, new / folder / n, shallow=False)
            for n in names), folder
    assert not has_test_split('det', str(old))
    for task in ('det', 'seg', 'cls'):
        assert has_test_split(task, str(new))
    with open(new / 'annotations/instances_test2017.json') as f:
        test = json.load(f)
    assert len(test['images']) == 4 and test['annotations']
    assert len(os.listdir(new / 'semantic_test2017')) == 4
    assert len(os.listdir(new / 'crops/test')) == 4
    val = cv2.imread(str(new / 'crops/val/000000.png'))
    assert not np.array_equal(val, cv2.imread(str(new /
                                                  'crops/test/000000.png')))


@pytest.mark.parametrize('task', ['det', 'seg', 'cls'])
def test_task_config_tests_on_the_test_split(task, tmp_path):
    root = tmp_path / 'data'
    write_digit_scenes(str(root), classes=(1, 2),
                       num_images=dict(train=2, val=2, test=2), seed=0)
    write_semantic_masks(str(root))
    write_digit_crops(str(root), classes=(1, 2),
                      num_images=dict(train=2, val=2, test=2), seed=0)
    cfg = task_config(task, (1, 2), str(root) + '/', 'up.pth',
                      str(tmp_path / 'work'), 10, 0)
    val, test = (
        json.dumps([d.get('ann_file'), d.get('data_prefix')])
        for d in (cfg.val_dataloader.dataset, cfg.test_dataloader.dataset))
    assert 'test' in test and 'val' not in test
    assert 'val' in val and 'test' not in val
    if task == 'det':
        assert cfg.test_evaluator.ann_file.endswith('instances_test2017.json')
        assert cfg.val_evaluator.ann_file.endswith('instances_val2017.json')


def test_reestimate_bn_averages_the_batches_statistics():
    from torch import nn
    from benchmarks.upstream import to_inputs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].momentum = 0.3
    images = np.random.default_rng(0).integers(
        0, 255, size=(6, 10, 10)).astype(np.uint8)
    reestimate_bn(model, images, batch_size=3)
    with torch.no_grad():
        out = [model[0](to_inputs(images[i:i + 3])) for i in (0, 3)]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in out]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3)) for o in out]).mean(0)
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, atol=1e-4)
    assert model[1].momentum == 0.3 and not model.training


def test_linear_cka():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ rotation + 1.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 8))) < 0.2
    # Closed form for one column each: the squared correlation.
    a, b = x[:, :1], x[:, :1] + 0.5 * x[:, 1:2]
    assert linear_cka(a, b) == pytest.approx(
        np.corrcoef(a[:, 0], b[:, 0])[0, 1]**2)


@pytest.mark.parametrize('task', ['det', 'seg', 'cls'])
def test_method_configs_build_their_optimizers(task, tmp_path):
    cfg = task_config(task, (0, 1, 2), str(tmp_path), 'none.pth',
                      str(tmp_path / 'w'), 50, seed=0)
    assert cfg.train_cfg.max_iters == 50
    assert [s['type'] for s in cfg.param_scheduler] == [
        'LinearLR', 'CosineAnnealingLR'
    ]
    assert cfg.param_scheduler[1]['end'] == 50
    heads = dict(
        det=lambda c: c.model.roi_head.bbox_head.num_classes,
        seg=lambda c: c.model.decode_head.num_classes,
        cls=lambda c: c.model.head.num_classes)
    assert heads[task](cfg) == 3 + (task == 'seg')
    if task == 'seg':  # the background weighs less than each digit
        assert cfg.model.decode_head.loss_decode.class_weight == [
            0.1, 1.0, 1.0, 1.0
        ]
    for method, config in (('llrd', dict(decay=0.5)),
                           ('olor', dict(r_max=0.01, power=2.0)),
                           ('olor+llrd',
                            dict(r_max=0.01, power=1.0, decay=0.5)),
                           ('olor-spd', dict(r_max=0.01, power=2.0)),
                           ('spd', dict(lam=0.5)),
                           ('l2sp', dict(alpha=0.1))):
        method_cfg = method_config(cfg, task, method, config)
        model = _model(method_cfg, task)
        wrapper = build_optim_wrapper(model, method_cfg.optim_wrapper)
        lr = method_cfg.optim_wrapper.optimizer.lr
        by_param = {}
        for group in wrapper.optimizer.param_groups:
            for p in group['params']:
                by_param[p] = group
        names = dict(model.named_parameters())
        stem = by_param[names['backbone.conv1.weight']]
        top = by_param[names['backbone.layer4.1.conv2.weight']]
        head = next(by_param[p] for n, p in names.items()
                    if not n.startswith('backbone.'))
        # Weight decay as AdamW's in every method: none on norm layers.
        wd = method_cfg.optim_wrapper.optimizer.weight_decay
        for name, expected in (('backbone.bn1.weight', 0.0),
                               ('backbone.layer2.0.bn2.bias', 0.0),
                               ('backbone.layer2.0.downsample.1.weight', 0.0),
                               ('backbone.layer2.0.conv1.weight', wd),
                               ('backbone.layer3.0.downsample.0.weight', wd)):
            assert by_param[names[name]]['weight_decay'] == expected, name
        if 'llrd' in method:
            assert by_param[names['backbone.bn1.weight']]['lr'] == \
                pytest.approx(lr * 0.5**5)
            assert by_param[names['backbone.layer3.1.bn1.weight']]['lr'] \
                == pytest.approx(lr * 0.5**2)
            assert stem['lr'] == pytest.approx(lr * 0.5**5)
            assert top['lr'] == pytest.approx(lr * 0.5)
            assert head['lr'] == pytest.approx(lr)
        else:
            assert stem['lr'] == top['lr'] == head['lr'] == lr
        if 'olor' in method:
            assert stem['rollback'] == pytest.approx(0.01)
            assert top['rollback'] == 0.0
            assert head.get('rollback', 0.0) == 0.0
            assert stem['rollback_follows_lr'] is True
        elif method == 'spd':  # AdamSPD: one constant strength
            assert stem['rollback'] == top['rollback'] == 0.5
            assert head['rollback'] == 0.0
            assert stem['rollback_follows_lr'] is False
        elif method == 'llrd':
            assert 'rollback' not in stem
        if method != 'llrd':
            assert type(wrapper.optimizer).__name__ == 'OLORAdamW'
            assert stem['review'] == ('spd' if 'spd' in method else 'olor')
            assert (stem['l2sp'], top['l2sp'], head['l2sp']) == (
                (0.1, 0.1, 0.0) if method == 'l2sp' else (0.0, 0.0, 0.0))
        if method == 'l2sp':
            assert stem['rollback'] == top['rollback'] == 0.0
    with pytest.raises(ValueError, match='takes the settings'):
        method_config(cfg, task, 'olor', dict(r_max=0.01))
    with pytest.raises(ValueError, match='Invalid method'):
        method_config(cfg, task, 'sgd', {})


def test_llrd_keys_by_stage():
    keys = llrd_keys(0.5)
    assert keys['backbone.layer4'] == dict(lr_mult=0.5)
    assert keys['backbone.layer1'] == dict(lr_mult=0.5**4)
    assert keys['backbone.layer1.1.bn2'] == dict(
        lr_mult=0.5**4, decay_mult=0.0)
    assert keys['backbone.conv1'] == dict(lr_mult=0.5**5)
    assert keys['backbone.bn1'] == dict(lr_mult=0.5**5, decay_mult=0.0)
    with pytest.raises(ValueError, match='lr decay'):
        llrd_keys(1.5)


def test_settings_from_a_selection(tmp_path, capsys):
    """--settings-from: per cell AdamW and each method's chosen setting;
    the setting flags and cells it has no choice for are refused."""
    rows = select(_tuning_runs({('olor', 1): (0.7, 0.9),
                                ('wise-ft', 2): (0.7, 0.9)}))
    path = tmp_path / 'selection.json'
    path.write_text(json.dumps(dict(meta={}, selection=rows)))
    args = forgetting.parse_args(['--tasks', 'cls', '--regimes', 'shifted',
                                  '--settings-from', str(path)])
    assert args.selection['cls', 'shifted']['olor'] == GRID['olor'][1]
    assert args.selection['cls', 'shifted']['wise-ft'] == GRID['wise-ft'][2]
    assert set(args.methods) == set(GRID)
    for argv, error in (
            (['--methods', 'adamw'], '--methods cannot apply'),
            (['--r-max', '0.1'], '--r-max cannot apply'),
            (['--tuning'], 'one at a time'),
            (['--regimes', 'unrelated'], 'no choices for cls unrelated')):
        with pytest.raises(SystemExit):
            forgetting.parse_args(
                ['--tasks', 'cls', '--settings-from', str(path)] +
                (argv if '--regimes' in argv else ['--regimes', 'shifted'] +
                 argv))
        assert error in capsys.readouterr().err
    (tmp_path / 'bad.json').write_text('{}')
    with pytest.raises(SystemExit):
        forgetting.parse_args(['--tasks', 'cls', '--settings-from',
                               str(tmp_path / 'bad.json')])
    assert 'not a --select output' in capsys.readouterr().err


def test_every_setting_is_used_or_refused(capsys):
    args = forgetting.parse_args(['--quick'])
    assert args.plan == forgetting.QUICK['plan'] and args.seeds == [0, 1, 2]
    assert args.iters == {(t, r): forgetting.QUICK['iters'][t]
                          for t, r in forgetting.QUICK['plan']}
    assert forgetting.settings(args) == [
        ('adamw', {}), ('l2sp', dict(alpha=0.01)), ('llrd', dict(decay=0.7)),
        ('olor', dict(r_max=0.01, power=1.0)), ('spd', dict(lam=1.0)),
        ('olor-spd', dict(r_max=0.01, power=1.0))
    ]
    args = forgetting.parse_args([
        '--quick', '--tasks', 'cls', '--regimes', 'related-few', 'shifted',
        '--iters', 'cls=50'
    ])
    assert args.plan == [('cls', 'related-few'), ('cls', 'shifted')]
    assert args.iters == {('cls', 'related-few'): 50, ('cls', 'shifted'): 50}
    # The full run's defaults: the schedules checked for convergence, twice
    # as long in det and seg related-many; TASK=N sets every regime of the
    # task, TASK:REGIME=N one, whatever their order.
    args = forgetting.parse_args(['--tasks', 'det', 'seg'])
    assert args.iters == {
        ('det', 'related-few'): 900, ('det', 'related-many'): 1800,
        ('det', 'shifted'): 900, ('det', 'unrelated'): 900,
        ('seg', 'related-few'): 1500, ('seg', 'related-many'): 3000,
        ('seg', 'shifted'): 1500, ('seg', 'unrelated'): 1500}
    args = forgetting.parse_args([
        '--tasks', 'det', '--regimes', 'related-few', 'related-many',
        '--iters', 'det:related-many=1200', 'det=600'
    ])
    assert args.iters == {('det', 'related-few'): 600,
                          ('det', 'related-many'): 1200}
    args = forgetting.parse_args(['--methods', 'olor+llrd', '--r-max',
                                  '0.001', '0.01', '--power', '2',
                                  '--llrd-decay', '0.8'])
    assert forgetting.settings(args) == [
        ('olor+llrd', dict(r_max=r, power=2.0, decay=0.8))
        for r in (0.001, 0.01)
    ]
    args = forgetting.parse_args(['--methods', 'spd', 'olor-spd',
                                  '--spd-lambda', '0.1', '1', '--r-max', '0.5',
                                  '--power', '1'])
    assert forgetting.settings(args) == [
        ('spd', dict(lam=0.1)), ('spd', dict(lam=1.0)),
        ('olor-spd', dict(r_max=0.5, power=1.0))
    ]
    refused = {
        ('--methods', 'olor', '--spd-lambda', '0.5'): '--spd-lambda is for',
        ('--methods', 'spd', '--spd-lambda', '1.5'):
        '--spd-lambda: invalid value(s) [1.5]',
        ('--methods', 'olor', '--r-max', '-0.5'):
        '--r-max: invalid value(s) [-0.5]',
        ('--methods', 'olor', '--power', 'nan'): '--power: invalid',
        ('--methods', 'l2sp', '--l2sp-alpha', '-1'): '--l2sp-alpha: invalid',
        ('--methods', 'llrd', '--llrd-decay', '0'): '--llrd-decay: invalid',
        ('--methods', 'adamw', 'llrd', '--r-max', '0.01'):
        '--r-max is for the method',
        ('--methods', 'adamw', '--l2sp-alpha', '0.1'): '--l2sp-alpha is for',
        ('--methods', 'adamw', 'olor', '--wise-alpha', '0.5'):
        '--wise-alpha is for',
        ('--methods', 'wise-ft', '--wise-alpha', '0.5'): 'add adamw',
        ('--tasks', 'cls', '--scenes', '4', '6', '3'): '--scenes is for',
        ('--tasks', 'det', '--crops', '4', '6', '3'): '--crops is for',
        ('--tasks', 'cls', '--iters', 'det=50'): '--iters: invalid',
        ('--iters', 'cls=1', ): '--iters: invalid',
        ('--tasks', 'det', '--regimes', 'shifted', '--iters',
         'det:related-many=900'): '--iters: invalid',
        ('--iters', 'det:many=900'): '--iters: invalid',
        ('--tasks', 'det', '--iters', 'det=900', '--val-interval', '900'):
        '--val-interval',
        ('--seeds', '0', '0'): 'repeated',
        ('--jobs', '0'): '--jobs',
    }
    for argv, message in refused.items():
        with pytest.raises(SystemExit):
            forgetting.parse_args(list(argv))
        assert message in capsys.readouterr().err, argv


def test_resume_is_refused_unless_it_continues_this_run(tmp_path, capsys):
    """``--resume``: the work dir's forgetting.json must be this command's,
    run on this kind of CPU; else one parser line, before any work."""
    argv = ['--tasks', 'cls', '--regimes', 'related-few', '--methods',
            'adamw', '--seeds', '0', '--work-dir', str(tmp_path)]
    with pytest.raises(SystemExit):
        forgetting.parse_args(argv[:-2] + ['--resume'])
    assert '--resume continues the run in --work-dir' in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        forgetting.parse_args(argv + ['--resume'])
    assert f"--resume: no such file '{tmp_path / 'forgetting.json'}'" in \
        capsys.readouterr().err
    command = forgetting.parse_args(argv).command
    assert '--resume' not in command and 'WORK_DIR' in command
    meta = dict(command=command, machine=forgetting.machine())
    (tmp_path / 'forgetting.json').write_text(
        json.dumps(dict(meta=meta, results=[])))
    resumed = forgetting.parse_args(argv + ['--resume'])
    assert resumed.command == command and resumed.resumed['meta'] == meta
    with pytest.raises(SystemExit):
        forgetting.parse_args(argv[:-3] + ['1'] + argv[-2:] + ['--resume'])
    assert 'not by this command' in capsys.readouterr().err
    (tmp_path / 'forgetting.json').write_text(json.dumps(dict(
        meta=dict(meta, machine=dict(cpu='another', isa='AVX512')),
        results=[])))
    with pytest.raises(SystemExit):
        forgetting.parse_args(argv + ['--resume'])
    assert 'one kind of CPU' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        forgetting.parse_args(['--report', str(tmp_path / 'forgetting.json'),
                               '--resume'])
    assert '--resume cannot apply' in capsys.readouterr().err


@pytest.mark.slow
def test_resume_runs_what_is_missing_and_ends_as_one_run(tmp_path):
    """A run stopped after its AdamW run (and WiSE-FT), continued with
    ``--resume``: only OLOR trains, and the JSON is the uninterrupted
    run's (the same scores; only the wall times differ)."""
    work_dir = tmp_path / 'bench'
    argv = [
        sys.executable, TOOL, '--work-dir',
        str(work_dir), '--tasks', 'cls', '--regimes', 'related-few',
        '--methods', 'adamw', 'olor', 'wise-ft', '--r-max', '0.01',
        '--power', '1', '--wise-alpha', '0.5', '--seeds', '0',
        '--upstream-steps', '3', '--crops', '20', '30', '20', '--iters',
        'cls=2'
    ]

    def run(*extra):
        proc = subprocess.run(argv + list(extra), cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run()
    out_json = work_dir / 'forgetting.json'
    full = json.loads(out_json.read_text())
    assert [e['method'] for e in full['results']] == \
        ['adamw', 'wise-ft', 'olor']
    stopped = dict(full, results=full['results'][:2])
    out_json.write_text(json.dumps(stopped))
    log = run('--resume')
    assert f'resuming {out_json}: 1 of 2 runs finished' in log
    assert len(re.findall(r'^\[\d+/2\] ', log, re.M)) == 1
    resumed = json.loads(out_json.read_text())
    assert resumed['meta']['command'] == full['meta']['command']
    assert resumed['meta']['resumed_runs'] == 1

    def scores(entry):
        return {k: v for k, v in entry.items() if k != 'wall_s'}

    assert [scores(e) for e in resumed['results']] == \
        [scores(e) for e in full['results']]
    assert resumed['results'][:2] == full['results'][:2]
    assert resumed['paired'] == full['paired']


def test_report_of_a_json_recomputes_its_pairs(tmp_path, capsys):
    """``--report``: tables and plots of a JSON, paired differences
    recomputed from its results (of the chosen seeds); nothing else may
    be given."""
    results = [
        dict(_entry(m, seed, down, head, config=config, task='det',
                    regime='related-few'), upstream_head_before=0.9)
        for seed, (base, gain) in enumerate([(0.30, 0.02), (0.34, 0.04),
                                             (0.28, 0.03), (0.20, 0.50)])
        for m, config, down, head in (
            ('adamw', {}, base, 0.60),
            ('olor', dict(r_max=0.01, power=1.0), base + gain, 0.70))
    ]
    path = tmp_path / 'forgetting.json'
    path.write_text(json.dumps(dict(results=results, paired=[])))
    forgetting.main(['--report', str(path), '--seeds', '0', '1', '2'])
    out = capsys.readouterr().out
    # olor - adamw over seeds 0-2: 2, 4, 3 points (seed 3 left out).
    mean, low, high = t_interval([2.0, 4.0, 3.0])
    assert 'seeds [0, 1, 2]' in out
    assert f'+{mean:.1f} [+{low:.1f}, +{high:.1f}]' in out
    assert (tmp_path / 'forgetting_det.png').stat().st_size > 1000
    for argv in (['--jobs', '1'], ['--quick'], ['--methods', 'olor']):
        with pytest.raises(SystemExit):
            forgetting.parse_args(['--report', str(path), *argv])
        assert 'cannot apply' in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        forgetting.parse_args(['--report', str(tmp_path / 'missing.json')])
    assert 'no such file' in capsys.readouterr().err



def test_report_merges_runs_that_pair(tmp_path, capsys):
    """``--report A B --work-dir D``: one JSON of both runs' results (a run
    in both files kept once), pairs over all their seeds, written to D;
    runs that would not pair, or disagree, are refused."""
    meta = dict(upstream_steps=600, scenes=dict(few=40), crops=None)

    def run(seeds, methods, name, **changes):
        results = [
            dict(_entry(m, seed, 0.30 + 0.01 * seed + gain, head,
                        config=config, task='seg', regime='related-few'),
                 iters=1500, upstream_head_before=0.97)
            for seed in seeds for label, m, config, gain, head in (
                ('adamw', 'adamw', {}, 0.0, 0.60),
                ('p1', 'olor', dict(r_max=0.01, power=1.0), 0.01 *
                 (seed + 1), 0.70),
                ('p2', 'olor', dict(r_max=0.01, power=2.0), -0.02, 0.65))
            if label in methods
        ]
        path = tmp_path / name
        path.write_text(
            json.dumps(dict(meta=dict(meta, **changes), results=results)))
        return str(path)

    first = run([0, 1], ('adamw', 'p1'), 'a.json')
    # more seeds; the same seeds' adamw runs again with another setting
    second = run([0, 1, 2], ('adamw', 'p1'), 'b.json')
    third = run([0, 1, 2], ('adamw', 'p2'), 'c.json')
    out_dir = tmp_path / 'merged'
    forgetting.main(['--report', first, second, third, '--work-dir',
                     str(out_dir)])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(out_dir / 'forgetting.json')
    merged = json.loads((out_dir / 'forgetting.json').read_text())
    assert merged['meta']['merged_from'] == [
        dict(file=path, command=None) for path in (first, second, third)
    ]
    assert merged['meta']['upstream_steps'] == 600
    # seeds 0-2 of adamw, power 1 and power 2, each run once
    assert len(merged['results']) == 3 * 3
    # olor p1 - adamw: 1, 2, 3 points over seeds 0-2; p2: -2 on each
    mean, low, high = t_interval([0.01, 0.02, 0.03])
    p1, p2 = [p for p in merged['paired'] if p['metric'] == 'downstream']
    assert p1['config']['power'] == 1.0 and p1['n'] == 3
    assert (p1['mean_diff'], p1['ci_low'], p1['ci_high']) == \
        pytest.approx((mean, low, high))
    assert p2['n'] == 3 and p2['mean_diff'] == pytest.approx(-0.02)
    assert (out_dir / 'forgetting_seg.png').stat().st_size > 1000
    forgetting.main(['--report', first, third, '--seeds', '1', '2',
                     '--work-dir', str(out_dir)])
    merged = json.loads((out_dir / 'forgetting.json').read_text())
    assert merged['meta']['seeds_kept'] == [1, 2]
    assert sorted({e['seed'] for e in merged['results']}) == [1, 2]
    assert len(merged['results']) == 2 + 2 + 1  # adamw, p2; p1 of seed 1

    fourth = str(tmp_path / 'd.json')
    refused = {
        # seed 1's adamw run scored otherwise
        'other scores': (first, tmp_path / 'd.json', lambda d: d['results'][
            2].update(downstream=0.5)),
        # another upstream schedule
        'cannot be merged': (first, tmp_path / 'd.json',
                             lambda d: d['meta'].update(upstream_steps=300)),
        # seed 0's runs for another number of iterations
        'differently': (first, tmp_path / 'd.json',
                        lambda d: [e.update(iters=900)
                                   for e in d['results'][:2]]),
    }
    for message, (one, path, change) in refused.items():
        run([0, 1, 2], ('adamw', 'p1'), 'd.json')
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        for flag in ('--report', '--select'):
            # refused by the parser, before any work or folder
            with pytest.raises(SystemExit) as exit:
                forgetting.main([flag, one, fourth, '--work-dir',
                                 str(tmp_path / 'no')])
            assert exit.value.code == 2
            line = capsys.readouterr().err.splitlines()[-1]
            assert f'error: {flag}: ' in line and message in line, line
            assert not (tmp_path / 'no').exists()
    with pytest.raises(SystemExit):
        forgetting.parse_args(['--report', first, second])
    assert 'give --work-dir' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        forgetting.parse_args(
            ['--report', first, '--work-dir', str(out_dir)])
    assert '--work-dir is for --report with several' in \
        capsys.readouterr().err

TINY = [
    '--upstream-steps', '3', '--scenes', '4', '6', '3', '--crops', '20',
    '30', '20', '--iters', 'det=2', 'seg=2', 'cls=2', '--seeds', '0', '1'
]


@pytest.mark.slow
def test_tiny_benchmark_writes_paired_results(tmp_path):
    """Every task, AdamW, OLOR and WiSE-FT, two seeds, at toy size,
    through the forgetting."""
    work_dir = tmp_path / 'bench'
    proc = subprocess.run(
        [
            sys.executable, TOOL, '--work-dir',
            str(work_dir), '--tasks', 'det', 'seg', 'cls', '--regimes',
            'related-few', '--methods', 'adamw', 'olor', 'wise-ft',
            '--r-max', '0.01', '--power', '1', '--wise-alpha', '0.5',
            '--val-interval', '1'
        ] + TINY,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    out_json = str(work_dir / 'forgetting.json')
    assert lines[-1] == out_json
    # A progress line per result entry: 3 tasks x 2 methods x 2 seeds,
    # and WiSE-FT beside each AdamW run.
    progress = [line for line in lines if re.match(r'\[\d+/\d+\] ', line)]
    assert len(progress) == 3 * 3 * 2
    assert all('left' in line and 'elapsed' in line for line in progress)
    with open(out_json) as f:
        data = json.load(f)
    results = data['results']
    # The machine, since a seed's runs repeat only on one kind of CPU.
    assert data['meta']['machine']['cpu'] == forgetting.cpu_model() != ''
    assert data['meta']['machine']['isa'] == \
        torch.backends.cpu.get_cpu_capability()
    keys = {(e['task'], e['regime'], e['method'],
             json.dumps(e['config'], sort_keys=True), e['seed'])
            for e in results}
    assert len(keys) == len(results) == 18
    assert {e['task'] for e in results} == {'det', 'seg', 'cls'}
    assert {e['method'] for e in results} == {'adamw', 'olor', 'wise-ft'}
    for e in results:
        for key in ('downstream', 'upstream_head_before',
                    'upstream_head_after', 'upstream_knn_after',
                    'drift_mean'):
            assert 0.0 <= e[key] <= 1.0, (key, e)
        assert e['wall_s'] > 0 and len(e['drift_by_layer']) == 9
        assert e['upstream'].endswith('_matched_seed%d.pth' % e['seed'])
        # Validated at both iterations; the last one is the result.
        if e['method'] != 'wise-ft':
            assert [step for step, _ in e['curve']] == [1, 2]
            assert e['curve'][-1][1] == pytest.approx(e['downstream'])
            # The checkpoint best on validation, scored on test.
            best = max(e['curve'], key=lambda c: c[1])
            assert (e['best_iter'], e['best_val_downstream']) == \
                pytest.approx(tuple(best))
            assert 0.0 <= e['test_best_downstream'] <= 1.0
            if e['best_iter'] == e['curve'][-1][0]:  # best = last weights
                assert e['test_best_downstream'] == pytest.approx(
                    e['test_downstream'])
        # The test split of every run; the retention instruments.
        for key in ('test_downstream', 'upstream_head_reest_after',
                    'upstream_head_reest_before', 'upstream_cka'):
            assert 0.0 <= e[key] <= 1.0 + 1e-9, (key, e)
    wise = [e for e in results if e['method'] == 'wise-ft']
    adamw = {(e['task'], e['seed']): e for e in results
             if e['method'] == 'adamw'}
    for e in wise:
        # Halfway back to the upstream weights: about half AdamW's drift.
        assert e['drift_mean'] == pytest.approx(
            0.5 * adamw[e['task'], e['seed']]['drift_mean'], rel=0.05)
    # `paired` is what the results give, recomputed here.
    assert data['paired'] == paired(results)
    rows = data['paired']
    # Every metric the runs have; WiSE-FT has no best-on-validation point.
    assert {(r['task'], r['method'], r['metric']) for r in rows} == {
        (t, m, k)
        for t in ('det', 'seg', 'cls') for m in ('olor', 'wise-ft')
        for k in PAIRED_METRICS
        if not (m == 'wise-ft' and k == 'test_best_downstream')
    }
    # Holm's family: the primary (test split) metrics.
    assert {r['metric'] for r in rows if r['p_holm'] is not None} == set(
        PRIMARY_METRICS)
    for row in rows:
        diffs = [
            e[row['metric']] - adamw[row['task'], e['seed']][row['metric']]
            for e in results if (e['task'], e['method']) ==
            (row['task'], row['method'])
        ]
        mean, low, high = t_interval(diffs)
        assert row['n'] == 2
        assert (row['mean_diff'], row['ci_low'],
                row['ci_high']) == pytest.approx((mean, low, high))
    for task in ('det', 'seg', 'cls'):
        assert (work_dir / f'forgetting_{task}.png').stat().st_size > 1000


def test_benchmarks_readme_is_generated_from_the_results(tmp_path):
    """benchmarks/README.md's tables and the start-here table in it and in
    README.md are the tool's output for the stored JSONs, and the
    benchmark's prose quotes no measured number."""
    readmes = [osp.join(ROOT, 'benchmarks', 'README.md'),
               osp.join(ROOT, 'README.md')]
    copies = [tmp_path / 'benchmarks.md', tmp_path / 'main.md']
    for readme, copy in zip(readmes, copies):
        shutil.copy(readme, copy)
    jsons = sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'benchmarks', 'results', '*',
                                    '*.json')))
    proc = subprocess.run(
        [sys.executable, TOOL, '--report', *jsons, '--markdown',
         *map(str, copies)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from benchmarks.report import (MARKDOWN_BEGIN, MARKDOWN_END, START_BEGIN,
                                   START_END)
    for readme, copy in zip(readmes, copies):
        with open(readme) as f:
            text = f.read()
        assert copy.read_text() == text, readme
        assert START_BEGIN in text and START_END in text, readme
    prose = text = open(readmes[0]).read()
    for begin, end in ((MARKDOWN_BEGIN, MARKDOWN_END),
                       (START_BEGIN, START_END)):
        prose = prose[:prose.index(begin)] + prose[prose.index(end):]
    prose = re.sub(r'\n    .*', '', prose)  # the commands
    # No decimals, signed differences or percentages but the intervals'
    # confidence level (names like ResNet-18 are not numbers).
    assert not re.findall(r'\d+\.\d+|(?<![\w-])[+\u2212-]\d|(?<!95)%',
                          prose)


def _children(pid):
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir('/proc'), reason='reads /proc')
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_interrupt_leaves_no_process_behind(tmp_path, signum):
    proc = subprocess.Popen(
        [
            sys.executable, TOOL, '--work-dir',
            str(tmp_path), '--tasks', 'cls', '--regimes', 'unrelated',
            '--jobs', '2', '--upstream-steps', '2000'
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a test run started in the background (`make
        # test &`, nohup) ignores SIGINT, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Wait for the workers to be busy pre-training.
        for line in proc.stdout:
            if line.startswith('preparing'):
                break
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = _children(proc.pid)
        assert len(workers) >= 2, workers
        time.sleep(2)
        workers = _children(proc.pid)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]
