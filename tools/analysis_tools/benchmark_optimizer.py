# Copyright (c) mmolor contributors. All rights reserved.
"""Time OLOR's optimizers against their torch twins, side by side.

For the parameters of real backbones built from the mmdet / mmseg
registries (ResNet-50, Swin-T, ViT-B by default), each OLOR optimizer is
timed against its torch twin in the same mode (for-loop, foreach, fused,
no flag), in interleaved rounds after a warm-up: round i steps
the twin then OLOR, round i+1 the other way round. The table gives the
median ms per step of each and the median and quartiles of the per-round
ratios, so load that comes and goes on a shared machine hits both alike.
OLOR-AdamW is also timed against the authors' AdamB formulation written as
the usual per-parameter loop. Optimizer state is measured from
``optimizer.state`` (bytes of every tensor in it, per parameter element).

Rows: ``for-loop`` / ``foreach`` / ``fused`` pass ``foreach=False`` /
``foreach=True`` / ``fused=True`` to both; ``default`` passes neither (torch
then loops over the tensors on the CPU). On the CPU OLOR's float32 groups
take OLOR's fused CPU kernel (step and review in one pass) in ``foreach``,
``fused`` and ``default``; every other case (``for-loop``, an install
without the kernel or ``MMOLOR_CPU_KERNEL=0``: the first line printed says
which) runs torch's own step in the same mode and then one multi-tensor
review pass; ``bf16 anchor``
adds ``anchor_dtype='bfloat16'``; ``spd`` rows take the review ``'spd'``
(the gradients are the same every step, so every tensor moves away from its
anchor and is reviewed: the rule's slowest case; ``spd, none reviewed`` puts
the anchors where every step moves toward them, so none is: its fastest
case, the step pass alone); the ``l2sp`` row takes
L2-SP (weight 0.01) and no review; the AdamB rows put OLOR-AdamW (weight decay
0, as AdamB has none) against the per-parameter AdamB loop. Columns: median ms
per step of the twin and of OLOR, the median [first-third quartile] of the
per-round ratios OLOR / twin, the bytes of optimizer state per parameter
element, and the number of threads torch ran on (``torch.get_num_threads()``:
torch's default unless ``--threads`` says otherwise). Every parameter rolls
back (rollback 0.01), so OLOR's state holds one anchor per parameter.

Optional sections: how far a run whose anchors are kept in bfloat16 drifts
from the float32-anchored run (``--drift-steps``), and the training
iteration time of a small Mask R-CNN with AdamW, OLOR-AdamW and OLOR-AdamW
with SPD's review, interleaved (``--e2e``).

Examples (times on a shared 2-core CPU):
    # torch's default thread count (2 here), as training runs; ~3 min
    python tools/analysis_tools/benchmark_optimizer.py
    python tools/analysis_tools/benchmark_optimizer.py --threads 1
    python tools/analysis_tools/benchmark_optimizer.py --quick  # ~40 s
    python tools/analysis_tools/benchmark_optimizer.py --e2e    # + ~3 min
"""
import argparse
import logging
import os.path as osp
import sys
import time
from typing import Optional, Sequence

from mmolor.utils.cli import add_verbose, quiet_startup, run_main

quiet_startup()  # before mmengine.runner is imported

import torch  # noqa: E402

from mmolor.optim import cpu_kernel, cpu_kernel_error  # noqa: E402

# benchmarks/ is in the checkout, beside mmolor/, and is not installed.
sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from benchmarks.optimizer import (BACKBONES, anchor_drift,  # noqa: E402
                                  bench_backbones, describe_machine, e2e,
                                  print_table)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--backbones',
        nargs='+',
        choices=list(BACKBONES),
        default=list(BACKBONES),
        help='backbones whose parameters are optimized (random '
        'initialisation; a step costs the same for any values)')
    parser.add_argument(
        '--steps',
        type=int,
        default=20,
        help='timed steps of each optimizer, interleaved with its twin\'s '
        '(default 20)')
    parser.add_argument(
        '--warmup',
        type=int,
        default=3,
        help='untimed steps of each optimizer first (default 3; the first '
        'step creates the state)')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        choices=['cpu', 'cuda'],
        help='where the parameters live (default: cuda when available)')
    parser.add_argument(
        '--skip-table',
        action='store_true',
        help='skip the timing table (to run only --drift-steps / --e2e)')
    parser.add_argument(
        '--no-forloop',
        action='store_true',
        help='skip the for-loop (foreach=False) rows')
    parser.add_argument(
        '--drift-steps',
        type=int,
        default=300,
        help='steps of the bfloat16-anchor drift measurement on the first '
        'backbone (default 300; 0 skips it)')
    parser.add_argument(
        '--e2e',
        action='store_true',
        help='also time training iterations of a small Mask R-CNN '
        '(R-50-FPN, synthetic COCO data) with AdamW, OLOR-AdamW and '
        "OLOR-AdamW with review='spd'")
    parser.add_argument(
        '--e2e-iters',
        type=int,
        default=8,
        help='timed iterations of each (default 8)')
    parser.add_argument(
        '--e2e-warmup',
        type=int,
        default=1,
        help='untimed iterations of each (default 1)')
    parser.add_argument(
        '--e2e-size',
        type=int,
        default=128,
        help='image side in pixels (default 128)')
    parser.add_argument(
        '--threads',
        type=int,
        help='torch.set_num_threads(THREADS) first (default: leave torch\'s '
        'default, as a training process has it; the table prints the count)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='ResNet-50 only, 12 steps, 3 warm-up, 100 drift steps, 4 e2e '
        'iterations: a smoke run of the tool')
    add_verbose(parser)
    args = parser.parse_args(argv)
    for name, low in (('steps', 1), ('drift_steps', 0), ('e2e_iters', 1),
                      ('e2e_warmup', 0), ('e2e_size', 32)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')}: "
                         f'{getattr(args, name)} (expected >= {low})')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device: cuda, and no GPU is available')
    if args.quick:
        args.backbones = args.backbones[:1]
        args.steps, args.warmup = 12, 3
        args.drift_steps = min(args.drift_steps, 100)
        args.e2e_iters, args.e2e_warmup = 4, 1
    if args.warmup < 1:
        parser.error('--warmup must be at least 1')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    # mmengine logs every initialised weight and paramwise option, and
    # warns about every frozen parameter.
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine').setLevel(logging.ERROR)
    default_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threads_note = (f'{torch.get_num_threads()} (--threads; torch\'s '
                        f'default here is {default_threads})')
    else:
        threads_note = f'{default_threads} (torch\'s default)'
    print(f'Machine: {describe_machine(args.device)}')
    print(f'Threads: {threads_note}')
    kernel = cpu_kernel()
    if kernel is not None:
        print('OLOR fused CPU kernel: installed, parallel regions on '
              f'{kernel.parallel_threads()} thread(s) '
              f'({osp.basename(kernel.__file__)})')
    else:
        print('OLOR fused CPU kernel: unavailable '
              f'({cpu_kernel_error()}); every row takes torch\'s step in '
              'its mode and then the review')
    start = time.time()
    if not args.skip_table:
        print_table(bench_backbones(args), threads_note)
    if args.drift_steps > 0:
        anchor_drift(args)
    if args.e2e:
        e2e(args)
    print(f'\nMachine at the end: {describe_machine(args.device)}; '
          f'wall time {time.time() - start:.0f} s')


if __name__ == '__main__':
    run_main(main)
