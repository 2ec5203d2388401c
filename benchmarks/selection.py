# Copyright (c) mmolor contributors. All rights reserved.
"""The tuning grid and the selection rule of ``benchmarks/PROTOCOL.md``.

Every method has the same number of settings (:data:`GRID`, strongest
first); :func:`select` picks one per (task, regime, method) from tuning runs
by the protocol's rule, on validation numbers only.
"""
import json
from typing import Dict, List, Optional, Tuple

__all__ = ['GRID', 'select']

# method -> its settings, strongest first (ties go to the weaker, later
# one). AdamW, the recipe, has one.
GRID: Dict[str, List[Dict]] = {
    'adamw': [{}],
    'olor': [dict(r_max=r, power=1.0) for r in (0.01, 0.003, 0.001)],
    'olor-spd': [dict(r_max=r, power=1.0) for r in (1.0, 0.1, 0.01)],
    'spd': [dict(lam=lam) for lam in (1.0, 0.5, 0.1)],
    'l2sp': [dict(alpha=a) for a in (0.1, 0.01, 0.001)],
    'llrd': [dict(decay=d) for d in (0.5, 0.7, 0.9)],
    'olor+llrd': [
        dict(r_max=r, power=1.0, decay=0.7) for r in (0.01, 0.003, 0.001)
    ],
    'wise-ft': [dict(alpha=a) for a in (0.3, 0.5, 0.8)],
}
# The methods that can be OLOR's best peer.
PEERS = ('spd', 'l2sp', 'llrd', 'wise-ft')


def _key(config: Dict) -> str:
    return json.dumps(config, sort_keys=True)


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def select(results: List[Dict],
           seeds: Optional[List[int]] = None) -> List[Dict]:
    """The protocol's choice per (task, regime, method) from tuning runs.

    Per method, among its :data:`GRID` settings run on every tuning seed:
    the highest mean validation ``downstream`` among the settings whose
    mean old head (``upstream_head_after``) is at least AdamW's on the same
    seeds, else the highest mean old head; ties to the weaker setting. The
    cell's best peer is the :data:`PEERS` method whose choice has the
    highest mean validation downstream.

    Args:
        results (list[dict]): Tuning runs (the benchmark's ``results``).
        seeds (list[int], optional): The tuning seeds; defaults to those of
            AdamW's runs in each cell.

    Returns:
        list[dict]: Per (task, regime, method): ``task``, ``regime``,
        ``method``, ``config`` (the choice), ``seeds``, ``downstream`` and
        ``old_head`` (its means), ``qualified`` (whether it met the
        retention condition), ``candidates`` (settings of the grid with all
        seeds: config, downstream, old head), ``missing`` (grid settings
        without every seed's run) and ``best_peer`` (on every row of the
        cell).

    Raises:
        ValueError: A cell has no AdamW runs, or a method none of its
        settings on every seed.
    """
    runs: Dict[Tuple, Dict[int, Dict]] = {}
    for r in results:
        runs.setdefault((r['task'], r['regime'], r['method'],
                         _key(r['config'])), {})[r['seed']] = r
    cells = list(dict.fromkeys((r['task'], r['regime']) for r in results))
    out = []
    for task, regime in cells:
        adamw = runs.get((task, regime, 'adamw', _key({})))
        if not adamw:
            raise ValueError(f'{task} {regime}: no adamw tuning runs')
        cell_seeds = sorted(seeds if seeds is not None else adamw)
        if not set(cell_seeds) <= set(adamw):
            raise ValueError(f'{task} {regime}: adamw lacks seeds '
                             f'{sorted(set(cell_seeds) - set(adamw))}')
        floor = _mean([adamw[s]['upstream_head_after'] for s in cell_seeds])
        rows = []
        for method, grid in GRID.items():
            candidates, missing = [], []
            for order, config in enumerate(grid):
                by_seed = runs.get((task, regime, method, _key(config)), {})
                if not set(cell_seeds) <= set(by_seed):
                    missing.append(config)
                    continue
                picked = [by_seed[s] for s in cell_seeds]
                candidates.append(
                    dict(
                        config=config,
                        order=order,
                        downstream=_mean([e['downstream'] for e in picked]),
                        old_head=_mean(
                            [e['upstream_head_after'] for e in picked])))
            if not candidates:
                if method == 'adamw':
                    continue
                raise ValueError(f'{task} {regime} {method}: no setting of '
                                 f'the grid has runs on seeds {cell_seeds}')
            qualified = [c for c in candidates if c['old_head'] >= floor]
            pool, score = ((qualified, 'downstream') if qualified else
                           (candidates, 'old_head'))
            choice = max(pool, key=lambda c: (c[score], c['order']))
            rows.append(
                dict(
                    task=task,
                    regime=regime,
                    method=method,
                    config=choice['config'],
                    seeds=cell_seeds,
                    downstream=choice['downstream'],
                    old_head=choice['old_head'],
                    qualified=bool(qualified),
                    candidates=[{
                        k: v
                        for k, v in c.items() if k != 'order'
                    } for c in candidates],
                    missing=missing))
        peers = [r for r in rows if r['method'] in PEERS]
        best = max(peers, key=lambda r: r['downstream'])['method'] \
            if peers else None
        for row in rows:
            row['best_peer'] = best
        out.extend(rows)
    return out
