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
import functools
import re
from typing import Tuple

import pytest

from benchmarks.census import (SKIPPED, Case, build_case, check_case,
                               collect_cases, format_table)
from mmolor.optim.layer_depth import get_layer_depths

# Builds every backbone upstream configs use: minutes on 2 cores.
pytestmark = pytest.mark.slow


@functools.lru_cache(maxsize=None)
def census_cases() -> Tuple[Case, ...]:
    """The cases, built once per session and only when a census test runs
    (it imports mmdet, mmseg and mmpretrain and parses every config they
    ship)."""
    return tuple(collect_cases())


def _may_be_selected(metafunc) -> bool:
    """False only if the ``-m`` expression leaves out a test with this
    module's marks (``-m "not slow"``): its cases need not be built."""
    expression = metafunc.config.getoption('markexpr')
    if not expression:
        return True
    marks = {mark.name for mark in metafunc.definition.iter_markers()}
    try:
        from _pytest.mark.expression import Expression
        return Expression.compile(expression).evaluate(
            lambda name, **kwargs: name in marks)
    except Exception:  # pytest's private API moved: build the cases
        return True


def pytest_generate_tests(metafunc):
    """One ``test_block_depths`` per case, parametrized at collection of
    this module only, not at its import."""
    if 'case' in metafunc.fixturenames:
        cases = census_cases() if _may_be_selected(metafunc) else ()
        metafunc.parametrize('case', cases, ids=[c.type for c in cases])


@pytest.fixture
def cases() -> Tuple[Case, ...]:
    return census_cases()


def test_census_covers_the_upstream_backbones(cases):
    types = {c.type for c in cases}
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


def test_block_depths(case):
    if case.type in SKIPPED:
        pytest.skip(SKIPPED[case.type])
    row = check_case(case)
    assert not row.problems, row.problems
    assert row.num_blocks >= 2 and row.max_depth >= 2


def test_hrnet_parallel_branches_stand_at_equal_depths(cases):
    case = next(c for c in cases if c.type == 'HRNet (mmseg)')
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


def test_format_table_has_one_row_per_backbone(cases):
    wanted = {'ResNet (mmdet)': 'single path',
              'HRNet (mmseg)': 'parallel branches'}
    rows = [check_case(c) for c in cases if c.type in wanted]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith('| backbone | config it comes from | D |')
    assert len(lines) == 2 + len(wanted)
    for row, line in zip(rows, lines[2:]):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[0] == row.type and cells[1] == f'`{row.source}`'
        assert cells[2:4] == [str(row.max_depth), str(row.num_blocks)]
        assert cells[4] and cells[4] in row.rule
        assert cells[5] == wanted[row.type]
