# Copyright (c) mmolor contributors. All rights reserved.
"""Paired comparisons of fine-tuning methods over seeds.

Every run of a seed starts from the same upstream checkpoint, data and data
order, so a method is compared with the AdamW run of the same seed: the
per-seed differences, their mean and a 95% t-interval,
``mean ± t(0.975, n - 1) · sd / sqrt(n)`` (sd with ddof 1).
"""
import json
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ['t_interval', 'paired']

PAIRED_METRICS = ('downstream', 'upstream_head_after')


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


def setting_key(entry: Dict) -> tuple:
    """The (task, regime, method, config) a ``results`` entry ran."""
    return (entry['task'], entry['regime'], entry['method'],
            json.dumps(entry['config'], sort_keys=True))


def paired(results: List[Dict],
           metrics: Sequence[str] = PAIRED_METRICS,
           baseline: str = 'adamw') -> List[Dict]:
    """Every (task, regime, method, config) minus ``baseline``, by seed.

    Args:
        results (list[dict]): The benchmark's ``results`` entries (``task``,
            ``regime``, ``method``, ``config``, ``seed`` and the metrics).
        metrics (Sequence[str]): The fields compared. Defaults to
            ``('downstream', 'upstream_head_after')``.
        baseline (str): The reference method, one run per (task, regime,
            seed). Defaults to ``'adamw'``.

    Returns:
        list[dict]: ``task``, ``regime``, ``method``, ``config``,
        ``metric``, ``n`` (seeds with both runs), ``mean_diff``, ``ci_low``,
        ``ci_high`` (None when n < 2), in the order the settings first
        appear in ``results``.
    """
    reference = {(e['task'], e['regime'], e['seed']): e
                 for e in results if e['method'] == baseline}
    groups: 'OrderedDict[tuple, List[Dict]]' = OrderedDict()
    for entry in results:
        if entry['method'] != baseline:
            groups.setdefault(setting_key(entry), []).append(entry)
    out = []
    for (task, regime, method, config), entries in groups.items():
        for metric in metrics:
            diffs = [
                e[metric] - reference[task, regime, e['seed']][metric]
                for e in sorted(entries, key=lambda e: e['seed'])
                if (task, regime, e['seed']) in reference
            ]
            if not diffs:
                continue
            mean, low, high = t_interval(diffs)
            out.append(
                dict(
                    task=task,
                    regime=regime,
                    method=method,
                    config=dict(entries[0]['config']),
                    metric=metric,
                    n=len(diffs),
                    mean_diff=mean,
                    ci_low=low,
                    ci_high=high))
    return out
