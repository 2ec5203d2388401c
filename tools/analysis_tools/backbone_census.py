# Copyright (c) mmolor contributors. All rights reserved.
"""Print mmolor's block depths for every backbone upstream configs use.

    python tools/analysis_tools/backbone_census.py [--markdown]

Builds each backbone type that an mmdet or mmseg config uses, from that
config's backbone dict (no weights), plus mmpretrain's ConvNeXt and
VisionTransformer and timm models through TIMMBackbone, and prints one
row each: the depth rule, D, the number of blocks and what the check
against the forward order found (see benchmarks/census.py).
"""
import argparse
import os.path as osp
import sys

from mmolor.utils.cli import add_verbose, quiet_startup

quiet_startup()  # before mmengine.runner is imported


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--markdown', action='store_true',
                        help='print a Markdown table (as in README.md)')
    parser.add_argument('--only', nargs='*', default=None,
                        help="backbone types to check, as the table names "
                        "them, e.g. 'ResNet (mmdet)' (default: all)")
    add_verbose(parser)
    return parser, parser.parse_args()


def main() -> int:
    parser, args = parse_args()
    import mmolor  # noqa: F401
    from mmolor.version import CODEBASE_EXTRAS, MissingExtraError, require
    try:
        # the census builds mmdet's, mmseg's, mmpretrain's and timm's
        # backbones
        for extra in CODEBASE_EXTRAS:
            require(extra, 'the backbone census')
    except MissingExtraError as e:
        sys.exit(f'error: {e}')

    # benchmarks/ is in the checkout, beside mmolor/, and is not installed.
    sys.path.insert(
        0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from benchmarks.census import (SKIPPED, check_case, collect_cases,
                                   format_table)
    cases = collect_cases()
    if args.only:
        unknown = sorted(set(args.only) - {c.type for c in cases})
        if unknown:
            parser.error(f'--only: unknown backbone type(s) {unknown} (the '
                         "types are named as 'ResNet (mmdet)')")
        cases = [c for c in cases if c.type in args.only]
    rows = []
    for i, case in enumerate(cases, 1):
        if case.type in SKIPPED:
            continue
        row = check_case(case)
        rows.append(row)
        print(f'[{i}/{len(cases)}] {row.type}: D={row.max_depth}, '
              f'{row.num_blocks} blocks, {row.seconds:.1f}s'
              + (f', PROBLEMS: {list(row.problems)}' if row.problems else ''),
              file=sys.stderr, flush=True)
    print(format_table(rows) if args.markdown else '\n'.join(
        f'{r.type:40} {r.max_depth:4} {r.num_blocks:4}  {r.rule}'
        for r in rows))
    for name, why in SKIPPED.items():
        print(f'skipped {name}: {why}')
    return 1 if any(r.problems for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
