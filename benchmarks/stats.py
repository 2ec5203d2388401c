# Copyright (c) mmolor contributors. All rights reserved.
"""Paired comparisons of fine-tuning methods over seeds.

Every run of a seed starts from the same upstream checkpoint, data and data
order, so a method is compared with the AdamW run of the same seed: the
per-seed differences, their mean and a 95% t-interval,
``mean ± t(0.975, n - 1) · sd / sqrt(n)`` (sd with ddof 1), the two-sided
t-test's p-value, the exact sign-flip p-value (:func:`signflip_p`) and that
p-value adjusted by Holm's step-down method within each (task, regime)
family (:func:`holm`).
"""
import json
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    't_interval', 't_test_p', 'signflip_p', 'holm', 'paired',
    'primary_metrics', 'PAIRED_METRICS'
]

# The primary comparisons (Holm's family) of runs with a test split: the
# last iterate's downstream metric on test and the old head with the
# BatchNorm statistics re-estimated on upstream data (benchmarks/PROTOCOL.md);
# of runs without one (results before the test split existed): validation
# downstream and the old head as the fine-tuned model has it.
PRIMARY_METRICS = ('test_downstream', 'upstream_head_reest_after')
LEGACY_METRICS = ('downstream', 'upstream_head_after')
# Every metric compared, where runs have it.
PAIRED_METRICS = PRIMARY_METRICS + LEGACY_METRICS + ('test_best_downstream',
                                                     'upstream_cka')


def primary_metrics(results: List[Dict]) -> Tuple[str, str]:
    """The primary metrics of ``results`` (see :data:`PRIMARY_METRICS`):
    the test split's when every run has one."""
    if results and all('test_downstream' in r for r in results):
        return PRIMARY_METRICS
    return LEGACY_METRICS


def t_interval(values: Sequence[float],
               level: float = 0.95) -> Tuple[float, Optional[float],
                                             Optional[float]]:
    """Mean and two-sided t confidence interval of ``values``.

    Returns:
        tuple: ``(mean, low, high)``; ``low`` and ``high`` are None for a
        single value (no interval).
    """
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError('No values')
    mean = sum(values) / n
    if n == 1:
        return mean, None, None
    sd = math.sqrt(sum((v - mean)**2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def t_test_p(values: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of the one-sample t-test of mean 0 (None for
    fewer than 2 values; 1.0 when every value is 0, 0.0 when they are
    equal and nonzero)."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean)**2 for v in values) / (n - 1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def signflip_p(values: Sequence[float]) -> Optional[float]:
    """Exact two-sided sign-flip (paired permutation) p-value of mean 0.

    Under the null each per-seed difference is as likely with either sign;
    the p-value is the share of the ``2 ** n`` sign patterns whose mean is at
    least as far from 0 as the observed one (the observed pattern
    included, so it is never below ``2 / 2 ** n`` for a two-sided test:
    0.0625 at n = 5, 0.002 at n = 10). None for no values; n <= 20.
    """
    n = len(values)
    if n == 0:
        return None
    if n > 20:
        raise ValueError(f'signflip_p enumerates 2**n patterns: n = {n} > 20')
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    observed = abs(v.sum())
    # Ties within float rounding count as "at least as far".
    tol = 1e-9 * max(1.0, observed)
    # Every pattern as the bits of 0 .. 2**n - 1, in blocks of 2**16.
    bits = np.arange(n, dtype=np.int64)
    hits = 0
    for start in range(0, 2**n, 2**16):
        codes = np.arange(start, min(2**n, start + 2**16), dtype=np.int64)
        signs = 1 - 2 * ((codes[:, None] >> bits) & 1)
        hits += int((np.abs(signs @ v) >= observed - tol).sum())
    return hits / 2**n


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjustment of a family of p-values (None entries
    are left out of the family and stay None)."""
    index = sorted((i for i, p in enumerate(p_values) if p is not None),
                   key=lambda i: p_values[i])
    m = len(index)
    out: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(index):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def setting_key(entry: Dict) -> tuple:
    """The (task, regime, method, config) a ``results`` entry ran."""
    return (entry['task'], entry['regime'], entry['method'],
            json.dumps(entry['config'], sort_keys=True))


def _diff_row(runs: List[Dict], reference: Dict[int, Dict], metric: str,
              **keys) -> Optional[Dict]:
    """``runs`` minus ``reference`` (by seed) on ``metric``: the mean, its
    95% t-interval and the two p-values (None when no seed has both)."""
    diffs = [
        e[metric] - reference[e['seed']][metric]
        for e in sorted(runs, key=lambda e: e['seed'])
        if e.get(metric) is not None
        and reference.get(e['seed'], {}).get(metric) is not None
    ]
    if not diffs:
        return None
    mean, low, high = t_interval(diffs)
    return dict(
        keys,
        metric=metric,
        n=len(diffs),
        mean_diff=mean,
        ci_low=low,
        ci_high=high,
        p_t=t_test_p(diffs),
        p_signflip=signflip_p(diffs))


def paired(results: List[Dict],
           metrics: Sequence[str] = PAIRED_METRICS,
           baseline: str = 'adamw',
           primary: Optional[Sequence[str]] = None) -> List[Dict]:
    """Every (task, regime, method, config) minus ``baseline``, by seed;
    and in a cell whose runs name OLOR's pre-registered ``best_peer``
    (confirmatory runs), the chosen OLOR minus that peer.

    Args:
        results (list[dict]): The benchmark's ``results`` entries (``task``,
            ``regime``, ``method``, ``config``, ``seed``, the metrics and,
            in confirmatory runs, ``best_peer``).
        metrics (Sequence[str]): The fields compared (where the runs have
            them). Defaults to :data:`PAIRED_METRICS`.
        baseline (str): The reference method, one run per (task, regime,
            seed). Defaults to ``'adamw'``.
        primary (Sequence[str], optional): The metrics whose comparisons
            form Holm's family in each (task, regime). Defaults to
            :func:`primary_metrics` of ``results``.

    Returns:
        list[dict]: ``task``, ``regime``, ``method``, ``config``,
        ``baseline`` (the method subtracted: ``baseline``, or the best peer)
        and ``baseline_config``, ``metric``, ``n`` (seeds with both runs),
        ``mean_diff``, ``ci_low``, ``ci_high``, ``p_t`` (None when n < 2),
        ``p_signflip`` and ``p_holm`` (the sign-flip p-value, Holm-adjusted
        over the primary metrics' entries of the same task and regime, the
        peer comparison included; None for the other metrics), in the order
        the settings first appear in ``results``, each cell's peer
        comparison after its baseline comparisons. Entries of a metric that
        only some runs have pair the runs that have it.
    """
    cells: 'OrderedDict[tuple, OrderedDict]' = OrderedDict()
    for entry in results:
        cell = cells.setdefault((entry['task'], entry['regime']),
                                OrderedDict())
        cell.setdefault(setting_key(entry), []).append(entry)
    out = []
    for (task, regime), settings in cells.items():
        by_method: Dict[str, List[list]] = {}
        for (_, _, method, _), entries in settings.items():
            by_method.setdefault(method, []).append(entries)
        if len(by_method.get(baseline, [])) > 1:
            raise ValueError(f'{task} {regime}: {baseline} ran with '
                             'several settings')
        reference = {e['seed']: e for e in by_method.get(baseline, [[]])[0]}
        for (_, _, method, _), entries in settings.items():
            if method == baseline:
                continue
            for metric in metrics:
                row = _diff_row(
                    entries,
                    reference,
                    metric,
                    task=task,
                    regime=regime,
                    method=method,
                    config=dict(entries[0]['config']),
                    baseline=baseline,
                    baseline_config={})
                if row is not None:
                    out.append(row)
        peers = {
            e['best_peer']
            for entries in settings.values() for e in entries
            if e.get('best_peer') is not None
        }
        if not peers:
            continue
        if len(peers) > 1:
            raise ValueError(f'{task} {regime}: several best peers: '
                             f'{sorted(peers)}')
        olor, peer = by_method.get('olor', []), by_method.get(peers.pop(), [])
        if len(olor) > 1 or len(peer) > 1:
            raise ValueError(f'{task} {regime}: comparing OLOR with its best '
                             'peer needs one setting of each')
        if not olor or not peer:
            continue
        olor, peer = olor[0], peer[0]
        for metric in metrics:
            row = _diff_row(
                olor, {e['seed']: e
                       for e in peer},
                metric,
                task=task,
                regime=regime,
                method='olor',
                config=dict(olor[0]['config']),
                baseline=peer[0]['method'],
                baseline_config=dict(peer[0]['config']))
            if row is not None:
                out.append(row)
    primary = primary_metrics(results) if primary is None else primary
    families: Dict[tuple, List[Dict]] = {}
    for row in out:
        row['p_holm'] = None
        if row['metric'] in primary:
            families.setdefault((row['task'], row['regime']), []).append(row)
    for rows in families.values():
        for row, p in zip(rows, holm([r['p_signflip'] for r in rows])):
            row['p_holm'] = p
    return out
