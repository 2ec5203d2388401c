# Copyright (c) mmolor contributors. All rights reserved.
"""Check that the installed stack runs: what `make install` ends with.

mmcv's compiled ops must load against the installed torch (an mmcv wheel
built against another torch fails here, not in the middle of training),
mmpretrain and timm must import, and OLOR's fused CPU kernel must be
there.
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='Check that the installed stack runs: mmcv\'s compiled '
        'ops, mmpretrain, timm and OLOR\'s fused CPU kernel.')
    parser.add_argument(
        '--verbose',
        action='store_true',
        help='show the libraries\' start-up warnings')
    args = parser.parse_args(argv)
    from mmolor.utils.cli import quiet_startup
    quiet_startup(['--verbose'] if args.verbose else [])

    import torch
    import mmcv
    from mmcv.ops import nms, roi_align

    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2], keep
    feats = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    pooled = roi_align(feats, rois, (1, 1), 1.0, 0, 'avg', True)
    assert torch.allclose(pooled, feats.mean().reshape(1, 1, 1, 1)), pooled

    import mmpretrain.models  # noqa: F401 (imports torchvision)
    import timm

    import mmolor
    from mmolor.optim import cpu_kernel, cpu_kernel_error
    kernel = 'ready' if cpu_kernel() is not None else \
        f'UNAVAILABLE ({cpu_kernel_error()})'
    print(f'mmolor {mmolor.__version__} ready: torch {torch.__version__}, '
          f'mmcv {mmcv.__version__} (ops ran), timm {timm.__version__}, '
          f'fused CPU kernel {kernel}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
