# Copyright (c) mmolor contributors. All rights reserved.
"""The general block-depth rule on small backbones with known depths."""
import torch
from torch import nn

from mmolor.optim.layer_depth import find_blocks, get_layer_depths


class Block(nn.Module):
    """A residual block: two convs."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.conv2(self.bn(self.conv1(x)).relu())


def owners(found):
    """Depth by owning module (``'stages.0.1'`` for its convs)."""
    out = {}
    for name, depth in found.depths.items():
        owner = name.rsplit('.', 2)[0] if '.conv' in name or '.bn.' in name \
            else name.rsplit('.', 1)[0]
        out.setdefault(owner, set()).add(depth)
    return {k: v.pop() if len(v) == 1 else v for k, v in out.items()}


class DownsamplersFirst(nn.Module):
    """mmpretrain ConvNeXt's layout: every downsampling layer is registered
    before every stage, and they run interleaved."""

    def __init__(self):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Conv2d(3, 4, 4, stride=4)] +
            [nn.Conv2d(4, 4, 2, stride=2) for _ in range(2)])
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(4) for _ in range(n)]) for n in (2, 1, 3))

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return x


def test_downsampling_layers_join_the_block_run_before_them():
    found = get_layer_depths(DownsamplersFirst(), 'block')
    assert not found.fallback
    assert owners(found) == {
        'downsample_layers.0': 0, 'stages.0.0': 1, 'stages.0.1': 2,
        'downsample_layers.1': 2, 'stages.1.0': 3, 'downsample_layers.2': 3,
        'stages.2.0': 4, 'stages.2.1': 5, 'stages.2.2': 6}
    assert found.max_depth == 6
    stage = get_layer_depths(DownsamplersFirst(), 'stage')
    assert owners(stage) == {
        'downsample_layers.0': 0, 'stages.0.0': 1, 'stages.0.1': 1,
        'downsample_layers.1': 1, 'stages.1.0': 2, 'downsample_layers.2': 2,
        'stages.2.0': 3, 'stages.2.1': 3, 'stages.2.2': 3}


class CSPLayer(nn.Module):
    """A CSP layer: its output convs are registered before its blocks."""

    def __init__(self, c, n):
        super().__init__()
        self.main_conv = nn.Conv2d(c, c, 1)
        self.short_conv = nn.Conv2d(c, c, 1)
        self.final_conv = nn.Conv2d(2 * c, c, 1)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(n)])

    def forward(self, x):
        main = self.blocks(self.main_conv(x))
        return self.final_conv(torch.cat([main, self.short_conv(x)], 1))


class CSPNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.stage1 = CSPLayer(4, 1)  # a stage of one block
        self.stage2 = CSPLayer(4, 2)

    def forward(self, x):
        return self.stage2(self.stage1(self.stem(x)))


def test_csp_layers():
    found = get_layer_depths(CSPNet(), 'block')
    assert [n for n, _ in find_blocks(CSPNet())] == [
        'stage1.blocks.0', 'stage2.blocks.0', 'stage2.blocks.1']
    assert owners(found) == {
        'stem': 0, 'stage1.main_conv': 0, 'stage1.blocks.0': 1,
        'stage1.short_conv': 1, 'stage1.final_conv': 1,
        'stage2.main_conv': 1, 'stage2.blocks.0': 2, 'stage2.blocks.1': 3,
        'stage2.short_conv': 3, 'stage2.final_conv': 3}


class TwoBranches(nn.Module):
    """HRNet-like: two branches side by side, then a fusion block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branches = nn.ModuleList([
            nn.Sequential(Block(4), Block(4)),
            nn.Sequential(Block(4), Block(4), Block(4))])
        self.fuse = nn.Conv2d(8, 4, 1)
        self.head = nn.Sequential(Block(4), Block(4))

    def forward(self, x):
        x = self.stem(x)
        a = self.branches[0](x)
        b = self.branches[1](x)
        return self.head(self.fuse(torch.cat([a, b], 1)))


def test_parallel_branches_stand_at_equal_depths():
    found = get_layer_depths(TwoBranches(), 'block')
    assert owners(found) == {
        'stem': 0, 'branches.0.0': 1, 'branches.0.1': 2,
        'branches.1.0': 1, 'branches.1.1': 2, 'branches.1.2': 3,
        'fuse': 3,  # the deepest block run before it
        'head.0': 4, 'head.1': 5}  # one deeper than the deepest feeding
    assert found.max_depth == 5


def test_the_forward_pass_leaves_no_trace():
    model = TwoBranches()
    model.train()
    model.branches[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    get_layer_depths(model, 'block')
    after_rng = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after_rng, torch.rand(1))  # the RNG did not move
    for k, v in model.state_dict().items():  # BN statistics, weights
        assert torch.equal(v, before[k]), k
    assert model.training and model.branches[0].training
    assert not model.branches[1].training
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_image_size_from_the_backbone():
    class FixedSize(DownsamplersFirst):
        img_size = 48  # a position embedding, say, fixes the input size

        def forward(self, x):
            if x.shape[-2:] != (48, 48):
                raise ValueError(f'wrong size {tuple(x.shape)}')
            return super().forward(x)

    found = get_layer_depths(FixedSize(), 'block')
    assert not found.fallback and found.max_depth == 6
