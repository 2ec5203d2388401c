# Copyright (c) mmolor contributors. All rights reserved.
"""The forgetting benchmark: its presets, arguments, runs and reports.

``tools/analysis_tools/forgetting_benchmark.py`` runs :func:`main` (the
protocol is described there and in ``benchmarks/PROTOCOL.md``):
:func:`parse_args` checks the command line against the presets before
anything runs; :func:`run` trains every (task, regime, method, setting,
seed) in a pool of worker processes and writes ``forgetting.json``;
:func:`report_json`,
:func:`markdown_json` and :func:`select_json` read finished JSONs
(:func:`merge_results` merges several).
"""
import argparse
import itertools
import json
import math
import multiprocessing
import os
import os.path as osp
import platform
import signal
import sys
import time

import torch

import mmolor
from .benchmark import digits_name, prepare_data_job, prepare_upstream_job, \
    run_one
from .report import (format_table, markdown_report, paired_tables,
                     plot_paired, setting_label, start_here, write_markdown)
from .selection import select
from .stats import PAIRED_METRICS, paired, setting_key
from .tasks import METHODS, REGIMES, REPO_ROOT, SCENES, TASKS

__all__ = [
    'QUICK', 'FULL', 'METRIC_NAMES', 'parse_args', 'settings', 'run',
    'report', 'merge_results', 'select_json', 'report_json', 'markdown_json',
    'main'
]

# What runs merged by --report must share.
MERGE_META = ('upstream_steps', 'scenes', 'crops', 'versions', 'threads')
METRIC_NAMES = dict(det='bbox AP', seg='mIoU', cls='top-1')
# --quick: each task in one regime, one setting per method, 3 seeds.
QUICK = dict(
    plan=[('det', 'related-few'), ('seg', 'related-few'),
          ('cls', 'shifted')],
    seeds=[0, 1, 2],
    methods=['adamw', 'l2sp', 'llrd', 'olor', 'spd', 'olor-spd'],
    iters=dict(det=300, seg=500, cls=300),
    upstream_steps=600,
    l2sp_alpha=[0.01],
    llrd_decay=[0.7],
    r_max=[0.01],
    power=[1.0],
    spd_lambda=[1.0],
    wise_alpha=[])
FULL = dict(
    plan=list(itertools.product(TASKS, REGIMES)),
    seeds=[0, 1, 2, 3, 4],
    methods=list(METHODS),
    # The schedules checked for convergence (README: the primary metric
    # flat over the last validation interval); with many training images
    # detection and segmentation need twice as long.
    iters=dict(det=900, seg=1500, cls=300),
    iters_by_cell={('det', 'related-many'): 1800,
                   ('seg', 'related-many'): 3000},
    upstream_steps=600,
    l2sp_alpha=[0.01, 0.1],
    llrd_decay=[0.7],
    r_max=[0.001, 0.003, 0.01],
    power=[1.0, 2.0],
    spd_lambda=[0.1, 0.5, 1.0],
    wise_alpha=[0.5, 0.8])



def cpu_model():
    """The CPU's model name (Linux), else the platform's processor."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """The kind of machine a run repeats on: the CPU model and torch's
    vector ISA (their kernels sum in other orders elsewhere)."""
    return dict(cpu=cpu_model(), isa=torch.backends.cpu.get_cpu_capability())


def command_line(argv):
    """The command a ``forgetting.json`` records: the tool and ``argv``
    with ``--work-dir``'s value written ``WORK_DIR`` and ``--resume``
    left out (a resumed run is the same run)."""
    return ' '.join([osp.relpath(sys.argv[0], REPO_ROOT)] + _without_work_dir(
        [a for a in argv if a != '--resume']))


def check_results_json(parser, name, path):
    """``parser.error`` unless ``path`` is a JSON with a ``results`` list
    (a ``forgetting.json``)."""
    if not osp.isfile(path):
        parser.error(f'{name}: no such file {path!r}')
    try:
        with open(path) as f:
            results = json.load(f)['results']
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f'{name}: {path!r} is not a forgetting.json '
                     f'({type(e).__name__}: {e})')
    if not isinstance(results, list):
        parser.error(f'{name}: {path!r} is not a forgetting.json (its '
                     '"results" is not a list)')


def check_mergeable(parser, name, paths):
    """The JSONs ``paths`` merged (:func:`merge_results`), or
    ``parser.error`` if they do not merge."""
    try:
        return merge_results(paths)
    except ValueError as e:
        parser.error(f'{name}: {e}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Forgetting benchmark: AdamW, L2-SP, LLRD, OLOR, '
        'OLOR+LLRD and WiSE-FT on digits upstream -> det/seg/cls downstream,'
        ' paired by seed')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='the smallest meaningful run: ' + ', '.join(
            f'{t} {r}' for t, r in QUICK['plan']) +
        f"; {', '.join(QUICK['methods'])}; {len(QUICK['seeds'])} seeds")
    parser.add_argument(
        '--tasks', nargs='+', choices=list(TASKS), help='task families')
    parser.add_argument(
        '--regimes', nargs='+', choices=list(REGIMES), help='regimes')
    parser.add_argument('--seeds', type=int, nargs='+', help='seeds')
    parser.add_argument(
        '--methods', nargs='+', choices=list(METHODS), help='methods')
    parser.add_argument(
        '--iters',
        nargs='+',
        metavar='TASK[:REGIME]=N',
        help='training iterations of a task in every regime, or of one '
        'regime, e.g. det=600 seg:related-many=3000 (default: '
        + ', '.join(f'{t}={n}' for t, n in FULL['iters'].items()) + ', '
        + ', '.join(f'{t}:{r}={n}'
                    for (t, r), n in FULL['iters_by_cell'].items())
        + '; --quick: '
        + ', '.join(f'{t}={n}' for t, n in QUICK['iters'].items()) + ')')
    parser.add_argument(
        '--val-interval',
        type=int,
        help='also validate every this many iterations and keep the curve '
        '(results: curve), to see where a schedule converges')
    parser.add_argument(
        '--settings-from',
        metavar='SELECTION_JSON',
        help='confirmatory runs (benchmarks/PROTOCOL.md): in each planned '
        '(task, regime), AdamW and every method of a --select output at its '
        'chosen setting, instead of --methods and the setting flags')
    parser.add_argument(
        '--resume',
        action='store_true',
        help='continue the run in --work-dir, stopped before its end: the '
        'runs its forgetting.json holds are kept, the others run (the same '
        'command, on the same kind of CPU; the upstream models are made '
        'again and must score as before)')
    parser.add_argument(
        '--tuning',
        action='store_true',
        help='tuning runs (benchmarks/PROTOCOL.md): score the validation '
        'split only, not the test split')
    parser.add_argument(
        '--upstream-steps', type=int, help='upstream pre-training steps')
    parser.add_argument(
        '--scenes',
        type=int,
        nargs=3,
        metavar=('FEW', 'MANY', 'VAL'),
        help='training scenes of the few and many sizes, validation scenes '
        f"(det, seg; default {SCENES['few'][0]} {SCENES['many'][0]} "
        f"{SCENES['few'][1]})")
    parser.add_argument(
        '--crops',
        type=int,
        nargs=3,
        metavar=('FEW', 'MANY', 'VAL'),
        help='training crops of the few and many sizes, validation crops '
        f"(cls; default {TASKS['cls'].sizes['few'][0]} "
        f"{TASKS['cls'].sizes['many'][0]} {TASKS['cls'].sizes['few'][1]})")
    parser.add_argument(
        '--l2sp-alpha', type=float, nargs='+', help='L2-SP weights alpha')
    parser.add_argument(
        '--llrd-decay',
        type=float,
        nargs='+',
        help='lr decay per backbone stage (llrd and olor+llrd)')
    parser.add_argument(
        '--r-max', type=float, nargs='+', help='OLOR r_max values')
    parser.add_argument(
        '--power', type=float, nargs='+', help='OLOR power values')
    parser.add_argument(
        '--spd-lambda',
        type=float,
        nargs='+',
        help='SPD strengths lambda in [0, 1] (the method spd)')
    parser.add_argument(
        '--wise-alpha',
        type=float,
        nargs='+',
        help='WiSE-FT interpolation weights (with the method wise-ft)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=min(2,
                    os.cpu_count() or 1),
        help='runs in parallel, one thread each; 1 runs them in this '
        'process')
    parser.add_argument(
        '--work-dir',
        help='defaults to work_dirs/forgetting_benchmark/<timestamp>')
    parser.add_argument(
        '--verbose',
        action='store_true',
        help='show the runners\' INFO logs, evaluation output and the '
        'libraries\' warnings in the workers')
    parser.add_argument(
        '--report',
        nargs='+',
        metavar='JSON',
        help='run nothing: print the tables and write the plots of a '
        'forgetting.json (also of an interrupted run), with its paired '
        'differences recomputed; --seeds keeps only those seeds. Several '
        'JSONs (runs with the same upstream steps and data sizes, e.g. '
        'more seeds or settings) are merged into <--work-dir>/'
        'forgetting.json')
    parser.add_argument(
        '--markdown',
        nargs='+',
        metavar='FILE',
        help='with --report: write each JSON\'s tables and read-outs, and '
        'the start-here table of the confirmatory cells, as markdown into '
        'each FILE, between the markers of the generated blocks it has '
        '(the prose around them kept; a file with none gets the tables; '
        'benchmarks/README.md and README.md are written so) instead of '
        'printing them and drawing the plots')
    parser.add_argument(
        '--select',
        nargs='+',
        metavar='JSON',
        help='run nothing: apply benchmarks/PROTOCOL.md\'s selection rule '
        'to tuning runs (JSONs merged as --report merges them; --seeds: the '
        'tuning seeds; --tasks, --regimes: only those cells), print each '
        'cell\'s choices and, with --work-dir, write '
        '<--work-dir>/selection.json')
    args = parser.parse_args(argv)
    if args.markdown is not None and args.report is None:
        parser.error('--markdown goes with --report')
    defaults = vars(parser.parse_args([]))

    def refuse_all_but(flag, allowed):
        given = [
            '--' + key.replace('_', '-') for key, value in vars(args).items()
            if key not in allowed and value != defaults[key]
        ]
        if given:
            parser.error(f"{flag} reads finished JSONs: {' '.join(given)} "
                         'cannot apply (only ' + ', '.join(
                             '--' + a.replace('_', '-')
                             for a in allowed if a != flag[2:]) + ' can)')

    if args.select is not None:
        if args.report is not None:
            parser.error('--select and --report: one at a time')
        refuse_all_but('--select',
                       ('select', 'seeds', 'tasks', 'regimes', 'work_dir'))
        for path in args.select:
            check_results_json(parser, '--select', path)
        args.merged = check_mergeable(parser, '--select', args.select)
        return args
    if args.report is not None:
        refuse_all_but('--report', ('report', 'seeds', 'work_dir',
                                    'markdown'))
        for path in args.report:
            check_results_json(parser, '--report', path)
        if args.markdown is not None:
            if args.work_dir is not None or args.seeds is not None:
                parser.error('--markdown renders each JSON as it is: '
                             'without --work-dir and --seeds')
            return args
        if len(args.report) > 1 and args.work_dir is None:
            parser.error('--report with several JSONs writes the merged '
                         'one: give --work-dir')
        args.merged = check_mergeable(parser, '--report', args.report)
        if len(args.report) == 1 and args.work_dir is not None:
            parser.error('--work-dir is for --report with several JSONs '
                         '(one JSON\'s plots are written beside it)')
        return args
    preset = QUICK if args.quick else FULL
    if args.settings_from is not None:
        setting_flags = ('methods', 'l2sp_alpha', 'llrd_decay', 'r_max',
                         'power', 'spd_lambda', 'wise_alpha')
        given = [
            '--' + k.replace('_', '-') for k in setting_flags
            if getattr(args, k) is not None
        ]
        if given:
            parser.error('--settings-from gives the methods and settings: '
                         f"{' '.join(given)} cannot apply")
        if args.tuning:
            parser.error('--settings-from is for confirmatory runs, '
                         '--tuning for tuning runs: one at a time')
        try:
            with open(args.settings_from) as f:
                rows = json.load(f)['selection']
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f'--settings-from: {args.settings_from!r} is not a '
                         f'--select output ({type(e).__name__}: {e})')
        args.selection, args.best_peer = {}, {}
        for r in rows:
            args.selection.setdefault((r['task'], r['regime']),
                                      {})[r['method']] = r['config']
            args.best_peer[r['task'], r['regime']] = r['best_peer']
        args.methods = ['adamw']
        for cell in args.selection.values():
            args.methods += [m for m in cell if m not in args.methods]
    tasks = list(dict.fromkeys(t for t, _ in preset['plan']))
    regimes = list(dict.fromkeys(r for _, r in preset['plan']))
    if args.tasks and args.regimes:
        args.plan = list(itertools.product(args.tasks, args.regimes))
    elif args.tasks:
        args.plan = [p for p in preset['plan'] if p[0] in args.tasks] or \
            list(itertools.product(args.tasks, regimes))
    elif args.regimes:
        args.plan = [p for p in preset['plan'] if p[1] in args.regimes] or \
            list(itertools.product(tasks, args.regimes))
    else:
        args.plan = preset['plan']
    if args.settings_from is not None:
        lacking = [c for c in args.plan if c not in args.selection]
        if lacking:
            parser.error(f'--settings-from {args.settings_from}: no choices '
                         'for ' + ', '.join(f'{t} {r}' for t, r in lacking))
    planned = {t for t, _ in args.plan}
    # Settings given for something the run does not hold are refused.
    users = dict(
        l2sp_alpha=('l2sp', ),
        llrd_decay=('llrd', 'olor+llrd'),
        r_max=('olor', 'olor+llrd', 'olor-spd'),
        power=('olor', 'olor+llrd', 'olor-spd'),
        spd_lambda=('spd', ),
        wise_alpha=('wise-ft', ))
    methods = args.methods or preset['methods']
    for key, used_by in users.items():
        if getattr(args, key) is not None and not set(used_by) & set(
                methods):
            parser.error(f"--{key.replace('_', '-')} is for the method(s) "
                         f"{', '.join(used_by)}, not in --methods "
                         f"{' '.join(methods)}")
    if args.scenes is not None and not planned & {'det', 'seg'}:
        parser.error('--scenes is for the tasks det and seg, not in the run')
    if args.crops is not None and 'cls' not in planned:
        parser.error('--crops is for the task cls, not in the run')
    for key in ('seeds', 'methods', 'upstream_steps', 'l2sp_alpha',
                'llrd_decay', 'r_max', 'power', 'spd_lambda', 'wise_alpha'):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    # Iterations per planned (task, regime): the preset's, then --iters
    # (TASK=N for every regime of a task, TASK:REGIME=N for one).
    iters = {(t, r): preset.get('iters_by_cell', {}).get(
        (t, r), preset['iters'][t]) for t, r in args.plan}
    given = [(item, *item.partition('=')[::2]) for item in args.iters or []]
    for item, cell, value in sorted(given, key=lambda g: ':' in g[1]):
        hits = [c for c in iters if cell in (c[0], ':'.join(c))]
        if not hits or not value.isdigit() or int(value) < 2:
            parser.error(f'--iters: invalid {item!r} (expected TASK=N or '
                         'TASK:REGIME=N with N >= 2 and TASK:REGIME in this'
                         f" run: {' '.join(':'.join(c) for c in iters)})")
        iters.update({c: int(value) for c in hits})
    args.iters = iters
    if 'wise-ft' in args.methods:
        if 'adamw' not in args.methods:
            parser.error('wise-ft interpolates the adamw runs: add adamw to '
                         '--methods')
        if not args.wise_alpha:
            parser.error('wise-ft needs --wise-alpha')
    for name in ('seeds', 'methods', 'l2sp_alpha', 'llrd_decay', 'r_max',
                 'power', 'spd_lambda', 'wise_alpha'):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name.replace('_', '-')}: repeated values "
                         f'{values}')
    ranges = dict(
        r_max=(0, 1, '0 <= x <= 1'),
        spd_lambda=(0, 1, '0 <= x <= 1'),
        power=(0, math.inf, 'x >= 0, finite'),
        l2sp_alpha=(0, math.inf, 'x >= 0, finite'),
        wise_alpha=(0, 1, '0 <= x <= 1'))
    for name, (low, high, text) in ranges.items():
        bad = [v for v in getattr(args, name) if not low <= v <= high
               or not math.isfinite(v)]
        if bad:
            parser.error(f"--{name.replace('_', '-')}: invalid value(s) "
                         f'{bad} (expected {text})')
    if [d for d in args.llrd_decay if not 0 < d <= 1]:
        parser.error(f'--llrd-decay: invalid value(s) {args.llrd_decay} '
                     '(expected 0 < x <= 1)')
    if args.upstream_steps < 1:
        parser.error(f'--upstream-steps: {args.upstream_steps} (expected '
                     '>= 1)')
    if min(args.seeds) < 0:
        parser.error(f'--seeds: invalid value(s) '
                     f'{[s for s in args.seeds if s < 0]} (expected >= 0)')
    if args.jobs < 1:
        parser.error(f'--jobs: {args.jobs} (expected >= 1)')
    if args.val_interval is not None and not \
            1 <= args.val_interval < min(args.iters.values()):
        parser.error(f'--val-interval: {args.val_interval} (expected >= 1 '
                     'and fewer than the iterations of every task and '
                     'regime)')
    for name in ('scenes', 'crops'):
        value = getattr(args, name)
        if value is not None and min(value) < 1:
            parser.error(f'--{name}: {value} (expected counts >= 1)')
    args.scenes = args.scenes or (SCENES['few'][0], SCENES['many'][0],
                                  SCENES['few'][1])
    cls = TASKS['cls'].sizes
    args.crops = args.crops or (cls['few'][0], cls['many'][0],
                                cls['few'][1])
    args.command = command_line(sys.argv[1:] if argv is None else argv)
    args.resumed = None
    if args.resume:
        if args.work_dir is None:
            parser.error('--resume continues the run in --work-dir: give '
                         '--work-dir')
        path = osp.join(args.work_dir, 'forgetting.json')
        check_results_json(parser, '--resume', path)
        with open(path) as f:
            args.resumed = json.load(f)
        meta = args.resumed.get('meta', {})
        if meta.get('command') != args.command:
            parser.error(f'--resume: {path!r} was written by '
                         f"{meta.get('command')!r}, not by this command "
                         f'({args.command!r})')
        if meta.get('machine') != machine():
            parser.error(f'--resume: {path!r} was run on '
                         f"{meta.get('machine')}, this machine is "
                         f'{machine()} (a seed\'s runs repeat only on one '
                         'kind of CPU)')
    return args


def settings(args):
    """(method, config) pairs that are trained, in run order."""
    out = []
    for method in args.methods:
        if method == 'adamw':
            out.append(('adamw', {}))
        elif method == 'l2sp':
            out += [('l2sp', dict(alpha=a)) for a in args.l2sp_alpha]
        elif method == 'llrd':
            out += [('llrd', dict(decay=d)) for d in args.llrd_decay]
        elif method == 'olor':
            out += [('olor', dict(r_max=r, power=p))
                    for r, p in itertools.product(args.r_max, args.power)]
        elif method == 'olor+llrd':
            out += [('olor+llrd', dict(r_max=r, power=p, decay=d))
                    for r, p, d in itertools.product(
                        args.r_max, args.power, args.llrd_decay)]
        elif method == 'olor-spd':
            out += [('olor-spd', dict(r_max=r, power=p))
                    for r, p in itertools.product(args.r_max, args.power)]
        elif method == 'spd':
            out += [('spd', dict(lam=lam)) for lam in args.spd_lambda]
    return out


def _call(job):
    """Pool entry point: ``(index, function name, kwargs)``."""
    index, name, kwargs = job
    fn = dict(
        upstream=prepare_upstream_job,
        data=prepare_data_job,
        run=run_one)[name]
    return index, fn(**kwargs)


def _init_worker():
    # Ctrl-C reaches the whole process group: the main process alone
    # decides, and terminates the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def run_jobs(pool, jobs, on_result):
    """Run ``(name, kwargs)`` jobs in ``pool`` (or here, if None) and call
    ``on_result(index, result)`` as each ends."""
    tagged = [(i, name, kwargs) for i, (name, kwargs) in enumerate(jobs)]
    results = map(_call, tagged) if pool is None else \
        pool.imap_unordered(_call, tagged)
    for index, result in results:
        on_result(index, result)


def write_json(path, data):
    """Atomically (a temporary file, then a rename)."""
    with open(path + '.tmp', 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(path + '.tmp', path)


def run(args):
    """Run the benchmark that ``args`` (the tool's parsed arguments) plan:
    upstream models and data per seed, then every fine-tuning run, in
    ``args.jobs`` worker processes; ``forgetting.json`` is rewritten after
    each run, and the tables and plots come last."""
    stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    work_dir = osp.abspath(
        args.work_dir
        or osp.join(REPO_ROOT, 'work_dirs', 'forgetting_benchmark', stamp))
    os.makedirs(work_dir, exist_ok=True)
    out_json = osp.join(work_dir, 'forgetting.json')
    plan = settings(args)
    regimes = list(dict.fromkeys(r for _, r in args.plan))
    meta = dict(
        command=args.command,
        plan=[dict(task=t, regime=r) for t, r in args.plan],
        regimes={r: REGIMES[r].description
                 for r in regimes},
        tasks={
            t: dict(
                config=osp.relpath(TASKS[t].config, REPO_ROOT),
                metric=TASKS[t].metric,
                iters={r: n
                       for (task, r), n in args.iters.items() if task == t})
            for t in dict.fromkeys(t for t, _ in args.plan)
        },
        seeds=args.seeds,
        upstream_steps=args.upstream_steps,
        scenes=dict(
            few=args.scenes[0], many=args.scenes[1], val=args.scenes[2]),
        crops=dict(few=args.crops[0], many=args.crops[1], val=args.crops[2]),
        scores='fractions in [0, 1]; downstream = the task\'s metric on '
        'held-out data; upstream_head = the upstream head on the backbone\'s'
        ' features of held-out upstream digits',
        statistics='paired by seed with adamw: mean difference and 95% '
        't-interval over seeds',
        versions=dict(
            mmolor=mmolor.__version__,
            torch=torch.__version__,
            python=platform.python_version()),
        # Results repeat on one machine, not across CPUs (their vector
        # kernels sum in other orders): the upstream of a seed differs.
        machine=machine(),
        threads=1,
        jobs=args.jobs)
    wise = list(args.wise_alpha) if 'wise-ft' in args.methods else []
    # One thread per process, `jobs` processes: the models are small, and
    # a fixed thread count keeps the numbers the same whatever --jobs.
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, _terminate)
    pool = None
    try:
        if args.jobs > 1:
            if not args.verbose:
                # The libraries' import-time deprecation warnings, once per
                # worker; a PYTHONWARNINGS of the user's own is kept.
                os.environ.setdefault('PYTHONWARNINGS', 'ignore')
            # spawn: a child forked after OpenMP has run can hang.
            pool = multiprocessing.get_context('spawn').Pool(
                args.jobs, initializer=_init_worker)
        _main(args, plan, wise, work_dir, out_json, meta, pool)
    finally:
        # A second signal must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if pool is not None:
            pool.terminate()
            pool.join()


def _main(args, plan, wise, work_dir, out_json, meta, pool):
    start = time.time()
    # 1. Upstream models and downstream data, per seed.
    upstreams, datasets = {}, {}
    for task, regime in args.plan:
        spec = REGIMES[regime]
        upstreams[spec.upstream_classes, spec.matched] = None
        datasets[spec.downstream_classes, spec.size] = None
    jobs, keys = [], []
    for seed in args.seeds:
        seed_dir = osp.join(work_dir, f'seed{seed}')
        for classes, matched in upstreams:
            keys.append(('upstream', seed, classes, matched))
            jobs.append(('upstream',
                         dict(
                             seed=seed,
                             classes=classes,
                             matched=matched,
                             steps=args.upstream_steps,
                             out_dir=osp.join(seed_dir, 'upstream'),
                             threads=1)))
        for classes, size in datasets:
            index = 0 if size == 'few' else 1
            keys.append(('data', seed, classes, size))
            jobs.append(('data',
                         dict(
                             seed=seed,
                             classes=classes,
                             scenes=(args.scenes[index], args.scenes[2]),
                             crops=(args.crops[index], args.crops[2]),
                             data_root=osp.join(
                                 seed_dir, 'data',
                                 f'digits-{digits_name(classes)}_{size}')))
                        )
    print(
        f'forgetting benchmark: {len(args.plan)} (task, regime) x ' +
        (f'{len(plan)} settings' if args.settings_from is None else
         f'AdamW and the settings chosen in {args.settings_from}') +
        f' x {len(args.seeds)} seeds; work dir '
        f'{work_dir}\niterations: ' +
        ', '.join(f'{t} {r} {n}' for (t, r), n in args.iters.items()) +
        f'\npreparing {len(jobs)} upstream models and data sets, '
        f'{args.jobs} at a time',
        flush=True)
    prepared = {}
    upstream_info = []

    def on_prepared(index, result):
        kind, seed, classes, extra = keys[index]
        prepared[keys[index]] = result
        if kind == 'upstream':
            upstream_info.append(
                dict(
                    seed=seed,
                    classes=list(classes),
                    matched=extra,
                    checkpoint=osp.relpath(result['checkpoint'], work_dir),
                    scores=result['scores'],
                    wall_s=result['wall_s']))
            print(
                f'seed {seed}: upstream digits {digits_name(classes)}'
                f"{' (matched)' if extra else ''} pre-trained in "
                f"{result['wall_s']:.0f}s, held-out " +
                ', '.join(f'{k} {100 * v:.1f}%'
                          for k, v in result['scores'].items()),
                flush=True)

    run_jobs(pool, jobs, on_prepared)
    meta['upstreams'] = sorted(
        upstream_info, key=lambda u: (u['seed'], u['classes']))
    if args.resumed is not None:
        scores = [(u['seed'], u['classes'], u['scores'])
                  for u in args.resumed['meta'].get('upstreams', [])]
        if scores != [(u['seed'], u['classes'], u['scores'])
                      for u in meta['upstreams']]:
            sys.exit(f'--resume: the upstream models made again score '
                     f'otherwise than those of {out_json}: its runs do '
                     'not pair with new ones (another version of the code?)')

    # 2. Fine-tuning runs, seed by seed.
    runs = []
    for seed in args.seeds:
        seed_dir = osp.join(work_dir, f'seed{seed}')
        for task, regime in args.plan:
            spec = REGIMES[regime]
            upstream = prepared['upstream', seed, spec.upstream_classes,
                                spec.matched]['checkpoint']
            data_root = prepared['data', seed, spec.downstream_classes,
                                 spec.size]['data_root']
            cell_plan, cell_wise = plan, wise
            if args.settings_from is not None:
                chosen = args.selection[task, regime]
                cell_plan = [('adamw', {})] + [
                    (m, c) for m, c in chosen.items()
                    if m not in ('adamw', 'wise-ft')
                ]
                cell_wise = ([chosen['wise-ft']['alpha']]
                             if 'wise-ft' in chosen else [])
            for method, config in cell_plan:
                name = method.replace('+', '-') + ''.join(
                    f'_{k}{v:g}' for k, v in config.items())
                runs.append(('run',
                             dict(
                                 task=task,
                                 regime=regime,
                                 method=method,
                                 config=config,
                                 seed=seed,
                                 data_root=data_root,
                                 upstream=upstream,
                                 work_dir=osp.join(seed_dir, task, regime,
                                                   name),
                                 iters=args.iters[task, regime],
                                 val_interval=args.val_interval,
                                 test=not args.tuning,
                                 wise_ft=cell_wise
                                 if method == 'adamw' else [],
                                 verbose=args.verbose,
                                 threads=1)))
    total = len(runs)
    results, ordered, walls, done = [], [], {}, []
    if args.resumed is not None:
        # A finished run: its entry, and an AdamW run's WiSE-FT entries.
        finished = {}
        for e in args.resumed['results']:
            key = (e['task'], e['regime'], e['seed'])
            if e['method'] == 'wise-ft':
                key += ('adamw', '{}')
            else:
                key += (e['method'], json.dumps(e['config'], sort_keys=True))
            finished.setdefault(key, []).append(e)
        for index, (_, run) in enumerate(runs):
            key = (run['task'], run['regime'], run['seed'], run['method'],
                   json.dumps(run['config'], sort_keys=True))
            if key in finished:
                done.append(index)
                ordered.extend(
                    (index, i, e) for i, e in enumerate(finished[key]))
        results[:] = [e for _, _, e in ordered]
        meta['resumed_runs'] = len(done)
        print(f'resuming {out_json}: {len(done)} of {total} runs finished',
              flush=True)
    todo = [i for i in range(total) if i not in done]
    print(f'fine-tuning: {len(todo)} runs, {args.jobs} at a time', flush=True)
    tuning_start = time.time()

    def on_run(todo_index, entries):
        index = todo[todo_index]
        done.append(index)
        task, iters = runs[index][1]['task'], runs[index][1]['iters']
        # Seconds per iteration, per task: regimes train for different
        # numbers of iterations.
        walls.setdefault(task, []).append(
            sum(e['wall_s'] for e in entries) / iters)
        if args.settings_from is not None:
            # The cell's pre-registered best peer of OLOR (``paired``
            # compares the chosen OLOR with it).
            for e in entries:
                e['best_peer'] = args.best_peer[e['task'], e['regime']]
        # In plan order, each AdamW run followed by its WiSE-FT entries.
        ordered.extend((index, i, e) for i, e in enumerate(entries))
        ordered.sort(key=lambda item: item[:2])
        results[:] = [e for _, _, e in ordered]
        mean_wall = {t: sum(w) / len(w) for t, w in walls.items()}
        fallback = sum(mean_wall.values()) / len(mean_wall)
        left = sum(
            mean_wall.get(runs[i][1]['task'], fallback) * runs[i][1]['iters']
            for i in range(total) if i not in done) / args.jobs
        elapsed = time.time() - start
        for e in entries:
            print(
                f"[{len(done)}/{total}] {e['task']} {e['regime']} "
                f"{setting_label(e['method'], e['config'])} seed {e['seed']}"
                f": {METRIC_NAMES[e['task']]} {100 * e['downstream']:.1f}, "
                f"old head {100 * e['upstream_head_before']:.1f} -> "
                f"{100 * e['upstream_head_after']:.1f}, drift "
                f"{e['drift_mean']:.4f} ({e['wall_s']:.0f}s); elapsed "
                f'{elapsed:.0f}s, ~{left:.0f}s left',
                flush=True)
        meta['wall_s'] = round(elapsed, 1)
        # Rewritten after every run: an interrupted benchmark leaves a
        # complete JSON of the runs done so far.
        write_json(out_json,
                   dict(meta=meta, results=results, paired=paired(results)))

    run_jobs(pool, [runs[i] for i in todo], on_run)
    meta['fine_tuning_s'] = round(time.time() - tuning_start, 1)
    meta['wall_s'] = round(time.time() - start, 1)
    pairs = paired(results)
    write_json(out_json, dict(meta=meta, results=results, paired=pairs))
    report(results, pairs, work_dir)
    print(f'total {time.time() - start:.0f}s')
    print(out_json)


def report(results, pairs, out_dir):
    """Print the tables and write one plot per task into ``out_dir``."""
    print('\nmean ± std over seeds (%), and minus AdamW on the same seed '
          '(points, mean [95% t-interval], p: exact sign-flip p-value '
          'Holm-adjusted within the task and regime):\n')
    print(paired_tables(results, pairs, METRIC_NAMES))
    for task in dict.fromkeys(r['task'] for r in results):
        out_png = osp.join(out_dir, f'forgetting_{task}.png')
        plot_paired(pairs, task, out_png, METRIC_NAMES[task])
        print(f'\nplot: {out_png}')


def _without_work_dir(argv):
    """``argv`` with the value of ``--work-dir`` written ``WORK_DIR``: a
    path of the machine that ran it says nothing to a reader."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith('--work-dir='):
            out[i] = '--work-dir=WORK_DIR'
        elif arg == '--work-dir' and i + 1 < len(out):
            out[i + 1] = 'WORK_DIR'
    return out


def merge_results(paths):
    """The ``results`` of several ``forgetting.json`` files, as one list,
    and the ``meta`` they share (:data:`MERGE_META`) with ``merged_from``:
    each file and the command that wrote it.

    The runs must be pairable: the same upstream steps and data sizes, the
    same iterations and upstream for a (task, regime, seed). A run found in
    more than one file (e.g. the AdamW runs of a second run adding settings)
    is kept once (the first file's entry), and must have the same scores in
    each on the metrics both have (the benchmark repeats on one machine).

    Raises:
        ValueError: The files cannot be merged (the reason).
    """
    merged, seen, where, sources = [], {}, {}, []
    first_meta = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = {k: data.get('meta', {}).get(k) for k in MERGE_META}
        source = dict(file=path, command=data.get('meta', {}).get('command'))
        if data.get('meta', {}).get('machine'):
            source['machine'] = data['meta']['machine']
        sources.append(source)
        if first_meta is None:
            first_meta = (path, meta)
        elif meta != first_meta[1]:
            raise ValueError(f'{path} and {first_meta[0]} cannot be '
                             f'merged: {meta} != {first_meta[1]}')
        for entry in data['results']:
            group = (entry['task'], entry['regime'], entry['seed'])
            setup = (entry.get('iters'), entry.get('upstream_head_before'))
            if where.setdefault(group, (path, setup))[1] != setup:
                raise ValueError(
                    f'{path} and {where[group][0]} ran {group} differently '
                    '(iterations, upstream head before): '
                    f'{setup} != {where[group][1]}')
            key = setting_key(entry) + (entry['seed'], )
            scores = tuple(entry.get(m) for m in PAIRED_METRICS)
            if key in seen:
                # Compared on the metrics both runs have (later versions
                # measure more).
                both = [(x, y) for x, y in zip(seen[key][1], scores)
                        if x is not None and y is not None]
                if any(x != y for x, y in both):
                    raise ValueError(
                        f'{key} is in {seen[key][0]} and {path} with other '
                        f'scores: {seen[key][1]} != {scores}')
                continue
            seen[key] = (path, scores)
            merged.append(entry)
    return merged, dict(first_meta[1], merged_from=sources)


def select_json(paths, merged, seeds=None, work_dir=None, tasks=None,
                regimes=None):
    """``--select``: the protocol's choices from tuning runs (every grid
    setting must have run on every tuning seed), in the cells of ``tasks``
    and ``regimes`` (default: every cell the runs hold); ``merged`` is
    :func:`merge_results` of ``paths``."""
    results, meta = merged
    results = [
        r for r in results if (tasks is None or r['task'] in tasks) and (
            regimes is None or r['regime'] in regimes)
    ]
    if not results:
        sys.exit(f"--select: {', '.join(paths)} hold no runs of --tasks "
                 f'{tasks} --regimes {regimes}')
    try:
        rows = select(results, seeds)
    except ValueError as e:
        sys.exit(f'--select: {e}')
    table = []
    for r in rows:
        table.append([
            r['task'], r['regime'], setting_label(r['method'], r['config']),
            f"{100 * r['downstream']:.1f}", f"{100 * r['old_head']:.1f}",
            'yes' if r['qualified'] else 'no',
            ', '.join(setting_label(r['method'], c)
                      for c in r['missing']) or '-', r['best_peer']
        ])
    print(format_table([
        'task', 'regime', 'choice', 'val downstream', 'old head',
        '>= AdamW head', 'grid settings not run', 'best peer'
    ], table))
    missing = [r for r in rows if r['missing']]
    if work_dir is not None:
        os.makedirs(work_dir, exist_ok=True)
        out = osp.join(work_dir, 'selection.json')
        write_json(out, dict(meta=meta, selection=rows))
        print(out)
    if missing:
        sys.exit(f'--select: {len(missing)} (task, regime, method) lack '
                 'grid settings (column "grid settings not run"): the '
                 'budgets are not equal yet')


def report_json(paths, merged, seeds=None, work_dir=None):
    """``--report``: the tables and plots of ``forgetting.json`` files,
    ``paired`` recomputed from their ``results`` (of ``seeds`` only, if
    given). One file: the plots go beside it. Several: merged
    (``merged``, :func:`merge_results` of ``paths``) into ``work_dir``'s
    ``forgetting.json``."""
    results, meta = merged
    if seeds is not None:
        results = [r for r in results if r['seed'] in seeds]
    if not results:
        sys.exit(f"{', '.join(paths)}: no results" +
                 (f' of the seeds {seeds}' if seeds is not None else ''))
    print(f"{', '.join(paths)}: {len(results)} results, seeds "
          f"{sorted({r['seed'] for r in results})}")
    pairs = paired(results)
    if work_dir is None:
        report(results, pairs, osp.dirname(osp.abspath(paths[0])))
        return
    os.makedirs(work_dir, exist_ok=True)
    out_json = osp.join(work_dir, 'forgetting.json')
    if seeds is not None:
        meta['seeds_kept'] = list(seeds)
    write_json(out_json, dict(meta=meta, results=results, paired=pairs))
    report(results, pairs, work_dir)
    print(out_json)


def markdown_json(paths, outs):
    """``--report --markdown``: each JSON's tables and read-outs as
    markdown, and the start-here table of its confirmatory cells, into
    each of ``outs`` between the markers of the blocks it has
    (:func:`~benchmarks.report.write_markdown`)."""
    sections, pairs, runs = [], [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rows = paired(data['results'])
        pairs += rows
        # the confirmatory runs (they name OLOR's best peer)
        runs += [r for r in data['results'] if 'best_peer' in r]
        sections.append(
            markdown_report(path, data['results'], rows, data['meta'],
                            METRIC_NAMES))
    for out in outs:
        write_markdown(out, '\n'.join(sections), start_here(pairs, runs))


def main(argv=None):
    """The command line of ``forgetting_benchmark.py``."""
    args = parse_args(argv)
    if args.report is not None and args.markdown is not None:
        markdown_json(args.report, args.markdown)
        print('\n'.join(args.markdown))
    elif args.report is not None:
        report_json(args.report, args.merged, args.seeds, args.work_dir)
    elif args.select is not None:
        select_json(args.select, args.merged, args.seeds, args.work_dir,
                    args.tasks, args.regimes)
    else:
        run(args)
