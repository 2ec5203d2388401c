# Copyright (c) mmolor contributors. All rights reserved.
"""`make demo`: pre-train upstream, fine-tune downstream, see the forgetting.

Everything runs on the CPU from data that ships inside scikit-learn (its
bundled handwritten digits), with no download. It is one seed of the
forgetting benchmark's ``det`` task in its ``related-few`` regime, the one
where the upstream features matter (README: "Does OLOR fine-tune better"):

1. upstream: a ResNet-18 at a quarter width learns to classify the ten
   digits drawn as they appear in the scenes (noisy background, scale and
   brightness; a plain PyTorch loop); the checkpoint is saved;
2. downstream: 40 training and 80 validation scenes of the same digits are
   written in COCO format (boxes and masks), and a Mask R-CNN whose backbone
   loads the upstream checkpoint (``init_cfg=dict(type='Pretrained',
   ...)``) is fine-tuned on them by ``tools/train.py``, once with AdamW and
   once with OLOR-AdamW (``configs/demo/``, 900 iterations; both at once on
   2 or more cores, one thread each);
3. report: COCO bbox/segm AP on the validation scenes, upstream accuracy of
   each fine-tuned backbone on held-out digits (kNN, refit linear probe and
   the original upstream head) against the pre-trained one, and the drift
   ||theta - theta0|| / ||theta0|| of every backbone layer; a table and two
   PNGs (drift by layer, OLOR's rollback strength by layer).

Example:
    python tools/demo.py                      # work_dirs/demo/<timestamp>
    python tools/demo.py --work-dir /tmp/demo --iters 300
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import threading
import time
from typing import Dict

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger, print_log  # noqa: E402

import mmolor  # noqa: F401,E402  registries
from mmolor.utils.cli import add_verbose, run_main  # noqa: E402
from mmolor.version import require  # noqa: E402

# benchmarks/ is in the checkout, beside mmolor/, and is not installed.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from benchmarks.protocol import (DEMO_CONFIGS, REPO_ROOT,  # noqa: E402
                                 backbone_state, last_checkpoint,
                                 measure_backbone, path_options,
                                 prepare_scenes, prepare_upstream,
                                 read_metrics)
from benchmarks.report import demo_tables, plot_drift  # noqa: E402
from benchmarks.rollback import plot_rollback, rollback_by_layer  # noqa: E402
from benchmarks.tasks import REGIMES, SCENES, warmup_iters  # noqa: E402

METHODS = (('AdamW', 'adamw'), ('OLOR-AdamW', 'olor'))
REGIME = REGIMES['related-few']


def parse_args():
    parser = argparse.ArgumentParser(
        description='Fine-tuning demo: an upstream digit classifier -> '
        'Mask R-CNN on scenes of the same digits, AdamW vs OLOR-AdamW')
    parser.add_argument(
        '--work-dir',
        help='where everything goes; defaults to '
        'work_dirs/demo/<timestamp>')
    parser.add_argument(
        '--iters',
        type=int,
        help='downstream training iterations (the warm-up and cosine '
        'schedule follow); defaults to the configs\' max_iters')
    parser.add_argument(
        '--upstream-steps',
        type=int,
        default=600,
        help='upstream pre-training steps (batch 64)')
    parser.add_argument(
        '--scenes',
        type=int,
        nargs=2,
        default=SCENES[REGIME.size],
        metavar=('TRAIN', 'VAL'),
        help='downstream scenes to write for training and for validation')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--sequential',
        action='store_true',
        help='fine-tune one method after the other (default: both at once '
        'when there are 2 or more cores; each uses one thread either way)')
    add_verbose(parser)
    args = parser.parse_args()
    if args.seed < 0:
        parser.error(f'--seed: {args.seed} (expected >= 0)')
    if args.work_dir is not None and osp.exists(args.work_dir) and \
            not osp.isdir(args.work_dir):
        parser.error(f'--work-dir: {args.work_dir!r} is a file')
    if args.iters is not None and args.iters < 2:
        parser.error(f'--iters: {args.iters} (expected >= 2: a warm-up '
                     'iteration and a cosine one)')
    if args.upstream_steps < 1 or min(args.scenes) < 1:
        parser.error(f'--upstream-steps {args.upstream_steps} and --scenes '
                     f'{" ".join(map(str, args.scenes))}: expected >= 1')
    return args


def train_command(config: str, work_dir: str, options: dict) -> list:
    """The tools/train.py command line of one fine-tuning."""
    return [
        sys.executable,
        osp.join(REPO_ROOT, 'tools', 'train.py'), config, '--work-dir',
        work_dir, '--cfg-options'
    ] + [f'{k}={v}' for k, v in options.items()]


def run_all(commands: Dict[str, list], parallel: bool, log) -> Dict:
    """Run the commands, in parallel (one thread each) or one by one.

    In parallel, every output line is prefixed with its run's name.

    Returns:
        dict: name -> wall time in seconds.
    """
    walls = {}
    # One thread per training (see main()).
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    if not parallel:
        for name, cmd in commands.items():
            log(f'{name}: $ ' + ' '.join(cmd))
            start = time.time()
            subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)
            walls[name] = time.time() - start
        return walls
    lock = threading.Lock()
    procs, pumps, starts = {}, [], {}
    width = max(len(n) for n in commands)

    def pump(name, stream):
        for line in stream:
            with lock:
                sys.stdout.write(f'[{name:<{width}}] {line}')
                sys.stdout.flush()

    for name, cmd in commands.items():
        log(f'{name}: $ ' + ' '.join(cmd))
        starts[name] = time.time()
        procs[name] = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1)
        pumps.append(
            threading.Thread(
                target=pump, args=(name, procs[name].stdout), daemon=True))
        pumps[-1].start()
    failed = []
    for name, proc in procs.items():
        if proc.wait() != 0:
            failed.append(f'{name} (exit {proc.returncode})')
        walls[name] = time.time() - starts[name]
    for thread in pumps:
        thread.join()
    if failed:
        raise RuntimeError('fine-tuning failed: ' + ', '.join(failed))
    return walls


def main():
    args = parse_args()
    require('det', 'the demo (a Mask R-CNN)')
    require('demo', 'the demo (bundled digits, plots)')
    # Every model here is small: one thread per process trains about as
    # fast as two, runs two fine-tunings side by side on 2 cores, does not
    # crawl when other work shares the cores, and gives the same numbers on
    # any machine (float sums depend on the thread count, and training
    # amplifies the difference). The forgetting benchmark does the same.
    torch.set_num_threads(1)
    stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    work_dir = osp.abspath(
        args.work_dir or osp.join(REPO_ROOT, 'work_dirs', 'demo', stamp))
    os.makedirs(work_dir, exist_ok=True)
    logger = MMLogger.get_instance(
        f'mmolor_demo_{stamp}', log_file=osp.join(work_dir, 'demo.log'))

    def log(msg):
        print_log(msg, logger=logger)

    start = time.time()
    log('[1/4] upstream: pre-training a ResNet-18 (w16) to classify the '
        'ten digits as drawn in the scenes (noise, scale, brightness; '
        f'{args.upstream_steps} steps)')
    upstream = prepare_upstream(
        osp.join(work_dir, 'upstream'),
        seed=args.seed,
        steps=args.upstream_steps,
        classes=REGIME.upstream_classes,
        matched=REGIME.matched)
    log(f'upstream checkpoint: {upstream.checkpoint}; held-out accuracy: ' +
        ', '.join(f'{k} {100 * v:.1f}%' for k, v in upstream.scores.items()))

    log('[2/4] downstream data: COCO scenes of the same digits '
        f'({args.scenes[0]} for training, {args.scenes[1]} for validation)')
    data_root = prepare_scenes(
        osp.join(work_dir, 'data'),
        seed=args.seed,
        num_images=dict(train=args.scenes[0], val=args.scenes[1]),
        classes=REGIME.downstream_classes)
    log(f'scenes written to {data_root}')

    options = path_options(data_root, upstream.checkpoint)
    options['randomness.seed'] = args.seed
    if args.iters:
        warmup = warmup_iters(args.iters)
        options.update({
            'train_cfg.max_iters': args.iters,
            'train_cfg.val_interval': args.iters,
            'default_hooks.checkpoint.interval': args.iters,
            # the configs' warm-up, then the cosine decay to 0
            'param_scheduler.0.end': warmup,
            'param_scheduler.1.begin': warmup,
            'param_scheduler.1.end': args.iters,
            'param_scheduler.1.T_max': args.iters - warmup,
        })
    parallel = not args.sequential and (os.cpu_count() or 1) >= 2
    log('[3/4] downstream: Mask R-CNN from the upstream backbone, with ' +
        ' and with '.join(name for name, _ in METHODS) +
        (' (in parallel, one thread each)' if parallel else ''))
    commands = {
        name: train_command(DEMO_CONFIGS[key], osp.join(work_dir, key),
                            options) + (['--verbose'] if args.verbose else [])
        for name, key in METHODS
    }
    walls = run_all(commands, parallel, log)
    runs = {}
    for name, key in METHODS:
        run_dir = osp.join(work_dir, key)
        scores, drift = measure_backbone(
            backbone_state(last_checkpoint(run_dir)), upstream)
        runs[name] = dict(
            metrics=read_metrics(run_dir), scores=scores, drift=drift)

    log('[4/4] report')
    report_dir = osp.join(work_dir, 'report')
    os.makedirs(report_dir, exist_ok=True)
    cfg = Config.fromfile(DEMO_CONFIGS['olor'])
    cfg.merge_from_dict(options)
    layers = rollback_by_layer(cfg)
    rollback = {r['layer']: r['rollback'] or 0.0 for r in layers}
    plot_rollback(
        layers,
        osp.join(report_dir, 'rollback_by_layer.png'),
        title='OLOR rollback strength by layer (demo config)')
    drifts = {name: run['drift'] for name, run in runs.items()}
    plot_drift(
        drifts, osp.join(report_dir, 'drift_by_layer.png'), rollback=rollback)
    table = demo_tables(runs, upstream.scores, rollback)
    with open(osp.join(report_dir, 'report.txt'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(report_dir, 'results.json'), 'w') as f:
        json.dump(
            dict(
                upstream=dict(
                    checkpoint=upstream.checkpoint, scores=upstream.scores),
                runs=runs,
                rollback=layers,
                wall_time_s=dict(walls, total=time.time() - start)),
            f,
            indent=1)
    print(f'\n{table}\n')
    log(f'plots: {report_dir}/drift_by_layer.png, '
        f'{report_dir}/rollback_by_layer.png')
    log(f'total time {time.time() - start:.0f}s (' +
        ', '.join(f'{n} fine-tuning {w:.0f}s' for n, w in walls.items()) + ')')
    print(f'work dir: {work_dir}')


if __name__ == '__main__':
    run_main(main)
