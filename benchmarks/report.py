# Copyright (c) mmolor contributors. All rights reserved.
"""Tables and plots of the demo and the forgetting benchmark."""
import json
import textwrap
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

from .stats import LEGACY_METRICS, PRIMARY_METRICS
from .stats import paired as paired_by_seed
from .stats import primary_metrics

__all__ = [
    'format_table', 'demo_tables', 'plot_drift', 'setting_label',
    'paired_tables', 'plot_paired', 'protocol_choice', 'start_here',
    'markdown_report', 'write_markdown'
]


def format_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table: columns padded, a rule under the header."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        '  '.join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def _pct(x: Optional[float]) -> str:
    return '-' if x is None else f'{100 * x:.1f}'


def demo_tables(runs: Dict[str, Dict],
                before: Dict[str, float],
                rollback: Optional[Dict[str, float]] = None) -> str:
    """The demo's printed report: a summary and a per-layer drift table.

    Args:
        runs (dict): Method name -> ``dict(metrics=..., scores=...,
            drift=[layer rows])``.
        before (dict): Upstream scores of the pre-trained backbone.
        rollback (dict, optional): Layer name -> OLOR rollback strength.
            Defaults to None.

    Returns:
        str: Both tables.
    """
    header = [
        'method', 'bbox AP', 'segm AP', 'kNN', 'probe', 'old head',
        'drift stem', 'drift mean'
    ]
    rows = [[
        'pre-trained', '-', '-',
        _pct(before['knn']),
        _pct(before['probe']),
        _pct(before['head']), '0', '0'
    ]]
    for name, run in runs.items():
        m, s, d = run['metrics'], run['scores'], run['drift']
        rows.append([
            name,
            _pct(m['coco/bbox_mAP']),
            _pct(m['coco/segm_mAP']),
            _pct(s['knn']),
            _pct(s['probe']),
            _pct(s['head']), f"{d[0]['drift']:.4f}",
            f"{np.mean([r['drift'] for r in d]):.4f}"
        ])
    summary = format_table(header, rows)
    names = list(runs)
    layers = [r['layer'] for r in runs[names[0]]['drift']]
    header = ['layer'] + [f'drift {n}' for n in names]
    if rollback is not None:
        header.append('OLOR r')
    rows = []
    for i, layer in enumerate(layers):
        row = [layer] + [f"{runs[n]['drift'][i]['drift']:.4f}" for n in names]
        if rollback is not None:
            row.append(f'{rollback.get(layer, 0.0):.4g}')
        rows.append(row)
    per_layer = format_table(header, rows)
    note = textwrap.fill(
        'AP: COCO mAP@[.5:.95] on held-out scenes (%). Upstream accuracy '
        '(%) on held-out digits of the upstream classes: kNN and a linear '
        'probe refit on the backbone\'s pooled features, and the old head '
        '(the upstream classifier, kept unchanged). Drift: ||theta - '
        'theta0|| / ||theta0|| of the backbone.', 79)
    return f'{summary}\n\n{note}\n\n{per_layer}'


def plot_drift(runs: Dict[str, List[Dict]],
               out: str,
               rollback: Optional[Dict[str, float]] = None) -> None:
    """Per-layer drift of several runs (and OLOR's strengths), as a PNG.

    Args:
        runs (dict): Method name -> ``layer_drift`` rows.
        out (str): Output file.
        rollback (dict, optional): Layer name -> rollback strength, drawn
            on a second axis. Defaults to None.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(runs)
    layers = [r['layer'] for r in runs[names[0]]]
    x = np.arange(len(layers))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(layers) + 2), 4))
    for i, name in enumerate(names):
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            [r['drift'] for r in runs[name]],
            width,
            label=name,
            color=f'C{i}')
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=45, ha='right', fontsize=8)
    ax.set_ylabel(r'drift $\|\theta-\theta_0\| / \|\theta_0\|$')
    ax.set_xlabel('backbone layer (shallow to deep)')
    ax.grid(axis='y', alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # Head room above the bars (and the line) for a one-row legend.
    ax.set_ylim(0,
                1.3 * max(r['drift'] for rows in runs.values() for r in rows))
    if rollback is not None:
        ax2 = ax.twinx()
        line, = ax2.plot(
            x, [rollback.get(layer, 0.0) for layer in layers],
            'k.--',
            label='OLOR rollback r')
        ax2.set_ylabel('rollback strength r')
        ax2.set_ylim(0, 1.3 * max(max(rollback.values()), 1e-12))
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(
        handles, labels, fontsize=8, loc='upper center', ncol=len(labels))
    ax.set_title('Drift from the pre-trained backbone, by layer', fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _mean_std(values: Sequence[float]) -> tuple:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def setting_label(method: str, config: Dict) -> str:
    """``olor (r_max=0.01, power=1)``."""
    body = ', '.join(f'{k}={v:g}' for k, v in config.items())
    return method + (f' ({body})' if body else '')


def _interval(row: Optional[Dict]) -> str:
    """``+1.2 [+0.3, +2.1]``, and Holm's p where the row has one."""
    if row is None:
        return '-'
    mean = f"{100 * row['mean_diff']:+.1f}"
    if row['ci_low'] is None:
        return mean
    text = (f"{mean} [{100 * row['ci_low']:+.1f}, "
            f"{100 * row['ci_high']:+.1f}]")
    if row.get('p_holm') is not None:
        text += f" p {row['p_holm']:.2g}"
    return text


def _to_adamw(paired: List[Dict]) -> List[Dict]:
    """The comparisons with AdamW (not those of OLOR with its best peer)."""
    return [p for p in paired if p.get('baseline', 'adamw') == 'adamw']


def _to_peer(paired: List[Dict], task: str, regime: str) -> Dict[str, Dict]:
    """The cell's comparisons of OLOR with its best peer, by metric."""
    return {
        p['metric']: p
        for p in paired if (p['task'], p['regime']) == (task, regime)
        and p.get('baseline', 'adamw') != 'adamw'
    }


def _peer_line(paired: List[Dict], task: str, regime: str,
               metrics: Sequence[str], names: Sequence[str]) -> str:
    """``\nOLOR (...) − its best peer spd (...): <metric> +1.0 [...] p ..``,
    or '' where the cell has no such comparison."""
    rows = _to_peer(paired, task, regime)
    if not any(m in rows for m in metrics):
        return ''
    row = next(iter(rows.values()))
    return (f"\n{setting_label('olor', row['config'])} − its best peer "
            f"{setting_label(row['baseline'], row['baseline_config'])}: " +
            '; '.join(f'{name} {_interval(rows.get(metric))}'
                      for metric, name in zip(metrics, names)))


def paired_tables(results: List[Dict], paired: List[Dict],
                  metric_names: Dict[str, str]) -> str:
    """One table per (task, regime): every setting's mean ± std over seeds
    and its paired difference to AdamW with the 95% CI, in points (and
    Holm's p), of the primary metrics (:func:`~benchmarks.stats.
    primary_metrics`).

    Args:
        results (list[dict]): The benchmark's ``results``.
        paired (list[dict]): :func:`~benchmarks.stats.paired` of them.
        metric_names (dict): Task -> the name of its downstream metric.
    """
    blocks = []
    groups: 'OrderedDict[tuple, List[Dict]]' = OrderedDict()
    for r in results:
        groups.setdefault((r['task'], r['regime']), []).append(r)
    metrics = primary_metrics(results)
    for (task, regime), entries in groups.items():
        names = ((f'{metric_names[task]} (test)', 'old head (BN re-est.)')
                 if metrics == PRIMARY_METRICS else
                 (metric_names[task], 'old head'))
        settings: 'OrderedDict[tuple, List[Dict]]' = OrderedDict()
        for e in entries:
            key = (e['method'], json.dumps(e['config'], sort_keys=True))
            settings.setdefault(key, []).append(e)
        rows = []
        for (method, config), runs in settings.items():
            found = {
                p['metric']: p
                for p in _to_adamw(paired)
                if (p['task'], p['regime'], p['method'],
                    json.dumps(p['config'], sort_keys=True)) == (task, regime,
                                                                 method,
                                                                 config)
            }
            cells = []
            for metric in metrics:
                mean, std = _mean_std([100 * e[metric] for e in runs])
                cells += [f'{mean:.1f} ± {std:.1f}',
                          _interval(found.get(metric))]
            rows.append([setting_label(method, runs[0]['config']),
                         len(runs)] + cells)
        before = _mean_std([
            100 * e[metrics[1].replace('_after', '_before')] for e in entries
        ])[0]
        header = [
            'method (setting)', 'seeds', names[0], '- AdamW [95% CI]',
            names[1], '- AdamW [95% CI]'
        ]
        blocks.append(f'{task}, {regime} (old head before fine-tuning: '
                      f'{before:.1f}):\n' + format_table(header, rows) +
                      _peer_line(paired, task, regime, metrics, names))
    return '\n\n'.join(blocks)


def plot_paired(paired: List[Dict], task: str, out: str,
                metric_name: str) -> None:
    """The task's settings as paired differences to AdamW (95% CI bars):
    downstream on x, old-head retention on y (the primary metrics: on the
    test split with re-estimated statistics where the runs have them);
    one panel per regime."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [p for p in _to_adamw(paired) if p['task'] == task]
    test = any(p['metric'] == PRIMARY_METRICS[0] for p in rows)
    x_metric, y_metric = PRIMARY_METRICS if test else LEGACY_METRICS
    regimes = list(OrderedDict.fromkeys(p['regime'] for p in rows))
    # The legend goes under each panel: room for one line per setting.
    settings = max([
        len({(p['method'], json.dumps(p['config'], sort_keys=True))
             for p in rows if p['regime'] == r}) for r in regimes
    ] or [0])
    fig, axes = plt.subplots(
        1,
        max(1, len(regimes)),
        figsize=(6 * max(1, len(regimes)), 4.5 + 0.17 * settings),
        squeeze=False)
    colours = {
        'l2sp': 'C2', 'llrd': 'C4', 'olor': 'C1', 'olor+llrd': 'C3',
        'wise-ft': 'C5', 'spd': 'C6', 'olor-spd': 'C8'
    }
    markers = 'osD^v<>pPX*'
    for ax, regime in zip(axes[0], regimes):
        points: 'OrderedDict[tuple, Dict]' = OrderedDict()
        for p in rows:
            if p['regime'] == regime:
                key = (p['method'], json.dumps(p['config'], sort_keys=True))
                points.setdefault(key, {})[p['metric']] = p
        seen: Dict[str, int] = {}
        for (method, config), found in points.items():
            x, y = found.get(x_metric), found.get(y_metric)
            if x is None or y is None:
                continue
            i = seen[method] = seen.get(method, -1) + 1

            def err(p):
                if p['ci_low'] is None:
                    return None
                return [[100 * (p['mean_diff'] - p['ci_low'])],
                        [100 * (p['ci_high'] - p['mean_diff'])]]

            ax.errorbar(
                100 * x['mean_diff'],
                100 * y['mean_diff'],
                xerr=err(x),
                yerr=err(y),
                fmt=markers[i % len(markers)],
                color=colours.get(method, 'k'),
                capsize=3,
                label=f"{setting_label(method, x['config'])} "
                f"(n={x['n']})")
        ax.axhline(0, color='grey', lw=0.8)
        ax.axvline(0, color='grey', lw=0.8)
        ax.set_xlabel(f"{metric_name}{' (test)' if test else ''} minus "
                      'AdamW (points)')
        ax.set_ylabel('old-head accuracy' +
                      (' (BN re-estimated)' if test else '') +
                      ' minus AdamW (points)')
        ax.set_title(f'{task}, {regime}', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.15))
    fig.suptitle('Paired with AdamW on the same seed: mean and 95% '
                 't-interval', fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# The block of a markdown file that --markdown writes (the rest is prose).
MARKDOWN_BEGIN = ('<!-- generated by tools/analysis_tools/'
                  'forgetting_benchmark.py --report ... --markdown: do not '
                  'edit by hand -->')
MARKDOWN_END = '<!-- end of generated block -->'


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join('---' if i == 0 else '---:'
                            for i in range(len(header))) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def _curve_shape(runs: List[Dict]) -> str:
    """``peak 45.4 @1500 → last 40.5`` of the mean validation curve of
    runs validated at the same iterations, else ``-``."""
    curves = [r.get('curve') for r in runs]
    if not all(curves) or len({tuple(s for s, _ in c)
                               for c in curves}) != 1:
        return '-'
    steps = [s for s, _ in curves[0]]
    mean = np.mean([[v for _, v in c] for c in curves], axis=0)
    peak = int(np.argmax(mean))
    return (f'{100 * mean[peak]:.1f} @{steps[peak]} → '
            f'{100 * mean[-1]:.1f}')


def _measurable(row: Optional[Dict], sign: int) -> bool:
    """Whether ``row`` is a measurable difference (Holm p < 0.05) of the
    given sign."""
    return bool(row and row.get('p_holm') is not None
                and row['p_holm'] < 0.05 and sign * row['mean_diff'] > 0)


# The methods a config can ship (WiSE-FT interpolates weights after
# training: no optimizer setting gives it).
SHIPPABLE = ('olor', 'olor-spd', 'spd', 'l2sp', 'llrd', 'olor+llrd')
# OLOR's two reviews, in the order a config prefers them.
OLOR_REVIEWS = ('olor', 'olor-spd')


def protocol_choice(paired: List[Dict], results: List[Dict], task: str,
                    regime: str) -> Optional[Dict]:
    """What a config of this cell ships by benchmarks/PROTOCOL.md's section
    6: the method (of :data:`SHIPPABLE`) with the largest measurable
    retention gain over AdamW among those with no measurable downstream
    cost; OLOR instead (review 'olor', else 'olor-spd') where it is not
    measurably worse than that method on either primary metric, on the same
    seeds (Holm within these four comparisons).

    Args:
        paired (list[dict]): :func:`~benchmarks.stats.paired` of a
            confirmatory cell's runs (test split, ``best_peer``).
        results (list[dict]): The runs (``results`` entries) themselves.
        task (str): The cell's task.
        regime (str): The cell's regime.

    Returns:
        dict, optional: ``method``, ``config``, ``rows`` (its comparisons
        with AdamW by metric) and ``olor_rows`` (OLOR's runs minus those of
        the method first chosen, when it is not OLOR), None where no method
        qualifies (ship the recipe without a review).
    """
    down, keep = PRIMARY_METRICS
    cell = [p for p in paired if (p['task'], p['regime']) == (task, regime)]
    to_adamw = {(p['method'], p['metric']): p for p in _to_adamw(cell)}
    candidates = [
        p for p in _to_adamw(cell)
        if p['metric'] == keep and p['method'] in SHIPPABLE
        and _measurable(p, +1)
        and not _measurable(to_adamw.get((p['method'], down)), -1)
    ]
    if not candidates:
        return None
    method = max(candidates, key=lambda p: p['mean_diff'])['method']
    to_method = []
    if method not in OLOR_REVIEWS:
        # OLOR's runs against the method's on the same seeds; Holm within
        # these comparisons (the runs' best peer is not involved).
        runs = [{k: v for k, v in r.items() if k != 'best_peer'}
                for r in results if (r['task'], r['regime']) == (task, regime)
                and r['method'] in (method, ) + OLOR_REVIEWS]
        to_method = paired_by_seed(runs, (down, keep), baseline=method,
                                   primary=(down, keep))
        for review in OLOR_REVIEWS:
            rows = [p for p in to_method if p['method'] == review]
            if rows and not any(_measurable(p, -1) for p in rows):
                method = review
                break
    rows = {m: to_adamw[method, m] for m in (down, keep)
            if (method, m) in to_adamw}
    return dict(method=method, config=next(iter(rows.values()))['config'],
                rows=rows, olor_rows=to_method)


def _choice_line(choice: Optional[Dict], names: Sequence[str]) -> str:
    """What a config ships, and the direct comparisons of OLOR's reviews
    that decided it (where there were any)."""
    if not choice:
        return 'the recipe without a review'
    text = setting_label(choice['method'], choice['config'])
    by_setting: 'OrderedDict[str, Dict]' = OrderedDict()
    for p in choice['olor_rows']:
        by_setting.setdefault(
            f"{setting_label(p['method'], p['config'])} − "
            f"{setting_label(p['baseline'], p['baseline_config'])}",
            {})[p['metric']] = p
    if by_setting:
        text += ('; on the same seeds (Holm p within these comparisons) ' +
                 '; '.join(
                     f'{label}: ' + ', '.join(
                         f'{name} {_interval(rows.get(metric))}'
                         for metric, name in zip(PRIMARY_METRICS, names))
                     for label, rows in by_setting.items()))
    return text


def start_here(paired: List[Dict], results: List[Dict]) -> str:
    """The start-here table: per confirmatory cell, the chosen OLOR minus
    its best peer and what a config ships (:func:`protocol_choice` of
    ``paired`` and the ``results`` they compare), with its differences to
    AdamW; a markdown table, or '' without confirmatory cells."""
    down, keep = PRIMARY_METRICS
    cells = OrderedDict.fromkeys(
        (p['task'], p['regime']) for p in paired
        if p.get('baseline', 'adamw') != 'adamw')
    rows = []
    for task, regime in cells:
        peer = _to_peer(paired, task, regime)
        any_peer = next(iter(peer.values()))
        choice = protocol_choice(paired, results, task, regime)
        rows.append([
            f'{task}, {regime}', any_peer['n'],
            setting_label(any_peer['baseline'],
                          any_peer['baseline_config']),
            _interval(peer.get(down)), _interval(peer.get(keep)),
            setting_label(choice['method'], choice['config'])
            if choice else 'the recipe, no review',
            _interval(choice['rows'].get(down)) if choice else '-',
            _interval(choice['rows'].get(keep)) if choice else '-'
        ])
    if not rows:
        return ''
    return _md_table([
        'cell', 'seeds', "OLOR's best peer", 'OLOR − peer: downstream (test)',
        'OLOR − peer: old head (BN re-est.)', 'a config ships',
        '− AdamW: downstream (test)', '− AdamW: old head (BN re-est.)'
    ], rows)


def markdown_report(source: str, results: List[Dict], paired: List[Dict],
                    meta: Dict, metric_names: Dict[str, str]) -> str:
    """One JSON's results as markdown: per (task, regime) the settings'
    means ± std over seeds and paired differences to AdamW (95%
    t-interval, Holm-adjusted sign-flip p) of the primary metrics, the
    mean validation curve's peak and last value, and a generated read-out
    of the measurable differences (Holm p < 0.05). Every number comes from
    ``results``; nothing is typed by hand."""
    metrics = primary_metrics(results)
    test = metrics == PRIMARY_METRICS
    lines = [f'### `{source}`', '']
    commands = [m.get('command') for m in meta.get('merged_from', [])]
    commands = [c for c in commands if c] or [meta.get('command')]
    seeds = sorted({r['seed'] for r in results})
    lines.append(f"{len(results)} results, seeds {seeds}, upstream "
                 f"{meta.get('upstream_steps')} steps, threads "
                 f"{meta.get('threads')}; the commands that wrote them:")
    lines += ['', '```'] + [c for c in commands if c] + ['```', '']
    cells: 'OrderedDict[tuple, List[Dict]]' = OrderedDict()
    for r in results:
        cells.setdefault((r['task'], r['regime']), []).append(r)
    for (task, regime), entries in cells.items():
        names = ((f'{metric_names[task]} (test)', 'old head (BN re-est.)')
                 if test else (metric_names[task], 'old head'))
        settings: 'OrderedDict[tuple, List[Dict]]' = OrderedDict()
        for e in entries:
            settings.setdefault(
                (e['method'], json.dumps(e['config'], sort_keys=True)),
                []).append(e)
        found = {(p['method'], json.dumps(p['config'], sort_keys=True),
                  p['metric']): p
                 for p in _to_adamw(paired)
                 if (p['task'], p['regime']) == (task, regime)}
        rows, measurable = [], []
        for (method, config), runs in settings.items():
            label = setting_label(method, runs[0]['config'])
            cells_ = []
            for metric, name in zip(metrics, names):
                mean, std = _mean_std([100 * e[metric] for e in runs])
                row = found.get((method, config, metric))
                cells_ += [f'{mean:.1f} ± {std:.1f}', _interval(row)]
                if row and row.get('p_holm') is not None and \
                        row['p_holm'] < 0.05:
                    measurable.append(
                        f"{label}: {name} {100 * row['mean_diff']:+.1f} "
                        f"[{100 * row['ci_low']:+.1f}, "
                        f"{100 * row['ci_high']:+.1f}] (Holm p "
                        f"{row['p_holm']:.2g})")
            iters = sorted({e['iters'] for e in runs})
            rows.append([label, len(runs)] + cells_ +
                        [_curve_shape(runs), '/'.join(map(str, iters))])
        lines += [
            f'#### {task}, {regime}', '',
            _md_table([
                'method (setting)', 'seeds', names[0], '− AdamW', names[1],
                '− AdamW', 'val curve: peak → last', 'iterations'
            ], rows), ''
        ]
        family = sum(1 for p in paired
                     if (p['task'], p['regime']) == (task, regime)
                     and p.get('p_holm') is not None)
        lines.append(
            f'Measurable differences to AdamW (Holm p < 0.05 over the '
            f'{family} primary comparisons of this cell): ' +
            ('; '.join(measurable) if measurable else 'none') + '.')
        peer = _peer_line(paired, task, regime, metrics, names).strip()
        if peer:
            choice = protocol_choice(paired, results, task, regime)
            lines += [
                '', peer + ' (Holm p over the same family). A config of '
                'this cell ships (PROTOCOL.md, section 6): ' +
                _choice_line(choice, names) + '.'
            ]
        lines.append('')
    return '\n'.join(lines)


# The start-here table's block (:func:`start_here`), in the files that
# have one.
START_BEGIN = ('<!-- start-here table, generated by tools/analysis_tools/'
               'forgetting_benchmark.py --report ... --markdown: do not '
               'edit by hand -->')
START_END = '<!-- end of start-here table -->'


def write_markdown(path: str, body: str, start: str = '') -> None:
    """Put the report ``body`` between :data:`MARKDOWN_BEGIN` and
    :data:`MARKDOWN_END` and the start-here table ``start`` between
    :data:`START_BEGIN` and :data:`START_END` in ``path``: each block the
    file has is replaced (the prose around it stays); a file with neither
    (or no file) gets the report block alone."""
    text = None
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        pass
    blocks = [(MARKDOWN_BEGIN, MARKDOWN_END, body),
              (START_BEGIN, START_END, start or 'No confirmatory cell yet.')]
    found = [b for b in blocks
             if text is not None and b[0] in text and b[1] in text]
    if not found:
        text, found = MARKDOWN_BEGIN + MARKDOWN_END + '\n', blocks[:1]
    for begin, end, content in found:
        head = text[:text.index(begin)]
        tail = text[text.index(end) + len(end):]
        text = f'{head}{begin}\n\n{content.rstrip()}\n\n{end}{tail}'
    with open(path, 'w') as f:
        f.write(text)
