# Copyright (c) mmolor contributors. All rights reserved.
"""Does OLOR forget less than plain fine-tuning? A seeded benchmark.

The demo's protocol (see ``tools/demo.py``), repeated over seeds and
methods: for every seed, a ResNet-18 (quarter width) is pre-trained on the
bundled handwritten digits 0-4 and a Mask R-CNN whose backbone loads it is
fine-tuned on COCO scenes of the digits 5-9 (``configs/demo/``), with

- ``adamw``: plain AdamW, full fine-tuning;
- ``l2sp``: AdamW plus the L2-SP loss term alpha/2 ||theta - theta0||^2 on
  the backbone (Li et al., ICML 2018), for each ``--l2sp-alpha``;
- ``olor``: OLOR-AdamW, for each ``--r-max`` x ``--power``.

All runs of a seed share the upstream model, the scenes and the data order,
so methods are compared on the same draw. Scores are fractions in [0, 1]:
``downstream`` is the COCO bbox mAP on held-out scenes (``downstream_segm``
the mask mAP); ``upstream_before`` / ``upstream_after`` are the accuracy of
a kNN classifier on the pre-trained / fine-tuned backbone's features for
held-out upstream digits (``upstream_probe_*``: a refit logistic-regression
probe; ``upstream_head_*``: the original upstream head, not refit, the most
sensitive of the three).

It writes ``forgetting.json`` (``results``: one entry per (method, setting,
seed); ``summary``: mean and std over seeds) and ``forgetting.png``, and
prints the JSON file's path as its last line.

Example:
    python tools/analysis_tools/forgetting_benchmark.py --quick
    python tools/analysis_tools/forgetting_benchmark.py --seeds 0 1 2
"""
import argparse
import itertools
import json
import multiprocessing
import os
import os.path as osp
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

import mmolor

# benchmarks/ is in the checkout, beside mmolor/, and is not installed.
sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from benchmarks.benchmark import prepare_seed, run_one  # noqa: E402
from benchmarks.protocol import DEMO_CONFIGS, REPO_ROOT  # noqa: E402
from benchmarks.report import (format_table, plot_tradeoff,  # noqa: E402
                               summarize)

# --quick: one setting per method, the smallest run that still trains.
QUICK = dict(
    seeds=[0, 1, 2],
    iters=200,
    upstream_steps=150,
    scenes=(120, 40),
    l2sp_alpha=[0.1],
    r_max=[0.01],
    power=[1.0])
# The demo's size (400 iterations, 200 + 50 scenes); L2-SP from weak to
# strong (at AdamW's drift, alpha/2 ||theta - theta0||^2 is ~0.3x, 3x and 30x
# the task loss) and OLOR at the authors' r_max and ten times it.
FULL = dict(
    seeds=[0, 1, 2],
    iters=400,
    upstream_steps=200,
    scenes=(200, 50),
    l2sp_alpha=[0.01, 0.1, 1.0],
    r_max=[0.01, 0.1],
    power=[1.0, 2.0])


def _call_prepare_seed(kwargs):
    return prepare_seed(**kwargs)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Forgetting benchmark: AdamW vs L2-SP vs OLOR on the '
        'digits upstream -> Mask R-CNN downstream protocol')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='the smallest meaningful run: '
        f"{len(QUICK['seeds'])} seeds, one setting per method, "
        f"{QUICK['iters']} iterations (about 10 minutes on 2 CPU cores)")
    parser.add_argument('--seeds', type=int, nargs='+', help='seeds')
    parser.add_argument(
        '--iters', type=int, help='downstream iterations per run')
    parser.add_argument(
        '--upstream-steps', type=int, help='upstream pre-training steps')
    parser.add_argument(
        '--scenes',
        type=int,
        nargs=2,
        metavar=('TRAIN', 'VAL'),
        help='downstream scenes per seed')
    parser.add_argument(
        '--methods',
        nargs='+',
        choices=['adamw', 'l2sp', 'olor'],
        default=['adamw', 'l2sp', 'olor'],
        help='methods to run')
    parser.add_argument(
        '--l2sp-alpha', type=float, nargs='+', help='L2-SP weights alpha')
    parser.add_argument(
        '--r-max', type=float, nargs='+', help='OLOR r_max values')
    parser.add_argument(
        '--power', type=float, nargs='+', help='OLOR power values')
    parser.add_argument(
        '--jobs',
        type=int,
        default=min(2,
                    os.cpu_count() or 1),
        help='runs in parallel (every run uses one thread: two one-thread '
        'processes train ~1.8x faster than one two-thread process on 2 '
        'cores); 1 runs them in this process')
    parser.add_argument(
        '--work-dir',
        help='defaults to work_dirs/forgetting_benchmark/<timestamp>')
    parser.add_argument(
        '--verbose',
        action='store_true',
        help='show the runners\' INFO logs and COCO evaluation output')
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def settings(args):
    """(method, config) pairs, in run order."""
    out = []
    if 'adamw' in args.methods:
        out.append(('adamw', {}))
    if 'l2sp' in args.methods:
        out += [('l2sp', dict(alpha=a)) for a in args.l2sp_alpha]
    if 'olor' in args.methods:
        out += [('olor', dict(r_max=r, power=p))
                for r, p in itertools.product(args.r_max, args.power)]
    return out


def _cell(row, key, prefix=''):
    mean, std = row[f'{prefix}{key}_mean'], row[f'{prefix}{key}_std']
    if key.startswith('drift'):
        return f'{mean:+.4f} ± {std:.4f}' if prefix else \
            f'{mean:.4f} ± {std:.4f}'
    return f'{100 * mean:+.1f} ± {100 * std:.1f}' if prefix else \
        f'{100 * mean:.1f} ± {100 * std:.1f}'


def summary_tables(summary):
    """Mean ± std over seeds, and the paired differences to AdamW."""
    keys = [('downstream', 'bbox AP'), ('downstream_segm', 'segm AP'),
            ('upstream_after', 'kNN'), ('upstream_probe_after', 'probe'),
            ('upstream_head_after', 'old head'), ('drift_mean', 'drift')]

    def name(row):
        config = ', '.join(f'{k}={v:g}' for k, v in row['config'].items())
        return row['method'] + (f' ({config})' if config else '')

    header = ['method (setting)', 'seeds'] + [label for _, label in keys]
    absolute = format_table(
        header,
        [[name(r), r['n']] + [_cell(r, k) for k, _ in keys] for r in summary])
    paired = [r for r in summary if 'delta_downstream_mean' in r]
    if not paired:
        return absolute
    delta = format_table(
        header, [[name(r), r['n']] + [_cell(r, k, 'delta_') for k, _ in keys]
                 for r in paired])
    return (f'{absolute}\n\nminus AdamW on the same seed (paired), '
            f'mean ± std:\n{delta}')


def main():
    args = parse_args()
    stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    work_dir = osp.abspath(
        args.work_dir
        or osp.join(REPO_ROOT, 'work_dirs', 'forgetting_benchmark', stamp))
    os.makedirs(work_dir, exist_ok=True)
    out_json = osp.join(work_dir, 'forgetting.json')
    out_png = osp.join(work_dir, 'forgetting.png')
    plan = settings(args)
    total = len(plan) * len(args.seeds)
    meta = dict(
        command=' '.join([osp.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:]),
        protocol=dict(
            upstream='ResNet-18 (base_channels 16) classifying the bundled '
            'digits 0-4, 32x32',
            downstream='Mask R-CNN fine-tuned on COCO scenes of the digits '
            '5-9, 128x128',
            configs={
                k: osp.relpath(v, REPO_ROOT)
                for k, v in DEMO_CONFIGS.items()
            },
            iters=args.iters,
            upstream_steps=args.upstream_steps,
            scenes=list(args.scenes),
            seeds=args.seeds,
            scores='fractions in [0, 1]; downstream = COCO bbox mAP, '
            'upstream = kNN accuracy on held-out upstream digits'),
        versions=dict(
            mmolor=mmolor.__version__,
            torch=torch.__version__,
            python=platform.python_version()),
        threads=torch.get_num_threads(),
        jobs=args.jobs)
    print(
        f'forgetting benchmark: {len(plan)} settings x '
        f'{len(args.seeds)} seeds = {total} runs of {args.iters} '
        f'iterations; work dir {work_dir}',
        flush=True)
    start = time.time()
    # One thread per process, `jobs` processes: the models are small, two
    # OpenMP threads sharing 2 cores with other work can be many times
    # slower than one, and a fixed thread count keeps the numbers the same
    # whatever --jobs and the machine's core count (float sums depend on
    # it, and training amplifies the difference).
    threads = 1
    torch.set_num_threads(threads)
    seeds = [
        dict(
            seed=seed,
            seed_dir=osp.join(work_dir, f'seed{seed}'),
            upstream_steps=args.upstream_steps,
            scenes=dict(train=args.scenes[0], val=args.scenes[1]),
            threads=threads) for seed in args.seeds
    ]
    print(
        f'upstream pre-training and scenes for {len(seeds)} seeds, '
        f'{args.jobs} at a time',
        flush=True)
    if args.jobs == 1:
        prepared = [prepare_seed(**kwargs) for kwargs in seeds]
    else:
        # spawn: a child forked after OpenMP has run can hang.
        pool = ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context('spawn'))
        prepared = list(pool.map(_call_prepare_seed, seeds))
    tasks = []
    for seed_kw, seed_info in zip(seeds, prepared):
        print(
            f"seed {seed_info['seed']}: upstream pre-trained and scenes "
            f"written in {seed_info['wall_s']:.0f}s (held-out " +
            ', '.join(f'{k} {100 * v:.1f}%'
                      for k, v in seed_info['scores'].items()) + ')',
            flush=True)
        for method, config in plan:
            name = method + ''.join(f'_{k}{v:g}' for k, v in config.items())
            tasks.append(
                dict(
                    method=method,
                    config=config,
                    seed=seed_info['seed'],
                    data_root=seed_info['data_root'],
                    upstream=seed_info['checkpoint'],
                    work_dir=osp.join(seed_kw['seed_dir'], name),
                    iters=args.iters,
                    verbose=args.verbose,
                    threads=threads))
    keys = ('downstream', 'downstream_segm', 'upstream_before',
            'upstream_after', 'upstream_probe_before', 'upstream_probe_after',
            'upstream_head_before', 'upstream_head_after', 'drift_mean')
    results = []

    def record(index, entry):
        results.append((index, entry))
        results.sort(key=lambda item: item[0])
        config = entry['config']
        label = entry['method'] + (' ' + ' '.join(f'{k}={v:g}'
                                                  for k, v in config.items())
                                   if config else '')
        print(
            f"[{len(results)}/{total}] seed {entry['seed']} {label}: bbox AP "
            f"{100 * entry['downstream']:.1f}, kNN "
            f"{100 * entry['upstream_before']:.1f} -> "
            f"{100 * entry['upstream_after']:.1f}, old head "
            f"{100 * entry['upstream_head_before']:.1f} -> "
            f"{100 * entry['upstream_head_after']:.1f}, drift "
            f"{entry['drift_mean']:.4f} ({entry['wall_s']:.0f}s; "
            f'{time.time() - start:.0f}s so far)',
            flush=True)
        entries = [e for _, e in results]
        meta['wall_s'] = round(time.time() - start, 1)
        # Rewritten after every run, atomically: an interrupted benchmark
        # leaves a complete JSON of the runs done so far.
        with open(out_json + '.tmp', 'w') as f:
            json.dump(
                dict(
                    meta=meta,
                    summary=summarize(entries, keys=keys),
                    results=entries),
                f,
                indent=1)
        os.replace(out_json + '.tmp', out_json)

    print(f'fine-tuning: {total} runs, {args.jobs} at a time', flush=True)
    if args.jobs == 1:
        for index, task in enumerate(tasks):
            record(index, run_one(**task))
    else:
        with pool:
            futures = {
                pool.submit(run_one, **task): index
                for index, task in enumerate(tasks)
            }
            for future in as_completed(futures):
                record(futures[future], future.result())
    summary = summarize([e for _, e in results], keys=keys)
    plot_tradeoff(summary, out_png)
    print('\nmean ± std over seeds (scores in %; upstream before fine-tuning:'
          ' kNN {:.1f}, probe {:.1f}, old head {:.1f}):'.format(
              *(100 * summary[0][f'upstream{k}_before_mean']
                for k in ('', '_probe', '_head'))))
    print(summary_tables(summary))
    print(f'\nplot: {out_png}')
    print(f'total {time.time() - start:.0f}s')
    print(out_json)


if __name__ == '__main__':
    main()
