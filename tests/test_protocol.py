# Copyright (c) mmolor contributors. All rights reserved.
"""benchmarks/PROTOCOL.md's chosen settings (section 4) are the committed
``--select`` outputs (benchmarks/results/v2/tuning/<task>/selection.json),
and every confirmatory result file ran exactly those settings, AdamW and
the pre-registered best peer, on seeds 10-19 (section 5)."""
import glob
import json
import os.path as osp
import re

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
V2 = osp.join(ROOT, 'benchmarks', 'results', 'v2')
COLUMNS = ('olor', 'olor-spd', 'spd', 'l2sp', 'llrd', 'olor+llrd', 'wise-ft')


def protocol_rows():
    """Section 4's table rows: {(task, regime): {method: text, ...}}."""
    with open(osp.join(ROOT, 'benchmarks', 'PROTOCOL.md')) as f:
        text = f.read()
    section = text.split('## 4.')[1].split('## 5.')[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        match = re.fullmatch(r'(\w+), ([\w-]+)', cells[0])
        if len(cells) == len(COLUMNS) + 2 and match and \
                cells[0] != 'task, regime':
            rows[match.groups()] = dict(zip(COLUMNS + ('best peer', ),
                                            cells[1:]))
    return rows


def written(config):
    """A setting as the table writes it: ``r_max 0.01, power 1``."""
    return ', '.join(f'{k} {v:g}' for k, v in config.items())


def selections():
    """{(task, regime): {method: config}, ...} and the best peers, from
    every committed selection.json."""
    chosen, peers = {}, {}
    for path in glob.glob(osp.join(V2, 'tuning', '*', 'selection.json')):
        with open(path) as f:
            for entry in json.load(f)['selection']:
                cell = entry['task'], entry['regime']
                chosen.setdefault(cell, {})[entry['method']] = entry['config']
                peers[cell] = entry['best_peer']
    return chosen, peers


def test_section_4_is_the_committed_selections():
    rows = protocol_rows()
    chosen, peers = selections()
    assert {'cls', 'seg', 'det'} <= {task for task, _ in chosen}
    assert sorted(rows) == sorted(chosen)
    for cell, row in rows.items():
        assert chosen[cell]['adamw'] == {}
        for method in COLUMNS:
            assert row[method] == written(chosen[cell][method]), (cell,
                                                                   method)
        assert row['best peer'] == peers[cell], cell


def test_confirmatory_runs_ran_the_chosen_settings_on_fresh_seeds():
    chosen, peers = selections()
    files = sorted(glob.glob(osp.join(V2, '*.json')))
    assert files
    for path in files:
        with open(path) as f:
            results = json.load(f)['results']
        cells = {(r['task'], r['regime']) for r in results}
        assert len(cells) == 1, path
        (cell, ) = cells
        ran = {(r['method'], json.dumps(r['config'])) for r in results}
        assert ran == {(m, json.dumps(c))
                       for m, c in chosen[cell].items()}, path
        assert {r['best_peer'] for r in results} == {peers[cell]}, path
        by_method = {}
        for r in results:
            by_method.setdefault(r['method'], []).append(r['seed'])
        for method, seeds in by_method.items():
            assert sorted(seeds) == list(range(10, 20)), (path, method)
