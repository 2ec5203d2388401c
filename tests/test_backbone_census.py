# Copyright (c) mmolor contributors. All rights reserved.
"""Census: true block depths on every backbone upstream configs use.

Every backbone type under a ``backbone`` key of an mmdet or mmseg config
(built from that config's dict, no weights), mmpretrain's ConvNeXt and
VisionTransformer and three timm models: no registration-order guess, no
block split over two depths, and depths that never fall along the order
in which a forward pass first uses the parameters (multi-branch
backbones: consecutive blocks of a branch one apart; HRNet: parallel
branches at equal depths). ``tools/analysis_tools/backbone_census.py``
prints the table.
"""
import re

import pytest

from benchmarks.census import (SKIPPED, build_case, check_case,
                               collect_cases, format_table)
from mmolor.optim.layer_depth import get_layer_depths

CASES = collect_cases()


def test_census_covers_the_upstream_backbones():
    types = {c.type for c in CASES}
    # a few that every reader will look for, and the ones that the
    # registration order misleads (ConvNeXt, CSPNeXt, PCPVT, Swin)
    for name in ('ResNet (mmdet)', 'ResNet (mmseg)', 'SwinTransformer (mmdet)',
                 'MixVisionTransformer (mmseg)', 'CSPNeXt (mmdet)',
                 'CSPDarknet (mmdet)', 'PCPVT (mmseg)', 'SVT (mmseg)',
                 'HRNet (mmdet)', 'HRNet (mmseg)', 'mmpretrain.ConvNeXt',
                 'BEiT (mmseg)', 'MAE (mmseg)', 'MSCAN (mmseg)',
                 'UNet (mmseg)',
                 'SSDVGG (mmdet)', 'PyramidVisionTransformerV2 (mmdet)',
                 'mmpretrain.TIMMBackbone'):
        assert name in types, name
    assert len(types) >= 52, sorted(types)


@pytest.mark.parametrize('case', CASES, ids=[c.type for c in CASES])
def test_block_depths(case):
    if case.type in SKIPPED:
        pytest.skip(SKIPPED[case.type])
    row = check_case(case)
    assert not row.problems, row.problems
    assert row.num_blocks >= 2 and row.max_depth >= 2


def test_hrnet_parallel_branches_stand_at_equal_depths():
    case = next(c for c in CASES if c.type == 'HRNet (mmseg)')
    found = get_layer_depths(build_case(case), 'block')
    by_position = {}
    for name, depth in found.depths.items():
        m = re.match(r'(stage\d\.\d+)\.branches\.(\d+)\.(\d+)\.', name)
        if m:
            by_position.setdefault((m.group(1), m.group(3)), {})[
                m.group(2)] = depth
    assert by_position
    for position, branches in by_position.items():
        assert len(set(branches.values())) == 1, (position, branches)
    # and each module starts one deeper than the last block before it
    assert found.max_depth < len(found.blocks)


def test_format_table_has_one_row_per_backbone():
    wanted = {'ResNet (mmdet)': 'single path',
              'HRNet (mmseg)': 'parallel branches'}
    rows = [check_case(c) for c in CASES if c.type in wanted]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith('| backbone | config it comes from | D |')
    assert len(lines) == 2 + len(wanted)
    for row, line in zip(rows, lines[2:]):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[0] == row.type and cells[1] == f'`{row.source}`'
        assert cells[2:4] == [str(row.max_depth), str(row.num_blocks)]
        assert cells[4] and cells[4] in row.rule
        assert cells[5] == wanted[row.type]
