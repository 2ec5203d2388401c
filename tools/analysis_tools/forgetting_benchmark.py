# Copyright (c) mmolor contributors. All rights reserved.
"""Does OLOR fine-tune better, and forget less? A seeded, paired benchmark.

For every seed a ResNet-18 (quarter width) is pre-trained on the bundled
handwritten digits (the upstream), and fine-tuned through the real
OpenMMLab runners on three task families (configs under ``configs/demo/``):

- ``det``: mmdet Mask R-CNN on COCO scenes of digits (bbox mAP; mask mAP
  beside it);
- ``seg``: mmseg UPerNet on the same scenes' label maps (mIoU);
- ``cls``: mmpretrain ImageClassifier on 32x32 digit crops drawn in the
  scenes' statistics (top-1).

in the regimes of ``benchmarks.tasks.REGIMES``: ``related-few`` /
``related-many`` (upstream: all ten digits in the downstream's low-level
statistics; downstream: the same digits, few or many training images),
``shifted`` (upstream: clean crops of the same digits) and ``unrelated``
(upstream: digits 0-4; downstream: 5-9), with the methods

- ``adamw``: full fine-tuning;
- ``l2sp``: AdamW + alpha/2 ||theta - theta0||^2 on the backbone (OLOR's
  ``l2sp`` setting: its gradient added in the optimizer);
- ``llrd``: AdamW with stage-wise layer-wise lr decay;
- ``olor``: OLOR-AdamW, r_max x power;
- ``olor+llrd``: OLOR over the lr decay's constructor;
- ``spd``: Selective Projection Decay (AdamSPD's rule, constant strength
  lambda over the backbone: OLOR's ``review='spd'``);
- ``olor-spd``: OLOR's layer-wise rollback, r_max x power, with SPD's
  selective review;
- ``wise-ft``: AdamW's fine-tuned backbone interpolated with the upstream
  one (no training).

All runs of a seed share the upstream checkpoint, the data and the data
order, and every method is compared with the AdamW run of the same seed:
mean difference and 95% t-interval over seeds. Scores are fractions in
[0, 1]: ``downstream`` is the task's metric on held-out data; upstream
retention is ``upstream_head_after``, the upstream classifier's own head on
the fine-tuned backbone's features for held-out upstream digits (a refit
kNN and linear probe are reported beside it).

Writes ``forgetting.json`` (``results``: one entry per task, regime,
method, setting and seed; ``paired``: the differences to AdamW), one PNG
per task, and prints the JSON file's path as its last line.

Example:
    python tools/analysis_tools/forgetting_benchmark.py --quick
    python tools/analysis_tools/forgetting_benchmark.py --tasks cls \\
        --regimes related-few unrelated --seeds 0 1 2 3 4
    python tools/analysis_tools/forgetting_benchmark.py \\
        --report work_dirs/forgetting_benchmark/<stamp>/forgetting.json
    python tools/analysis_tools/forgetting_benchmark.py --report A.json \\
        B.json --work-dir work_dirs/merged   # e.g. B: more seeds
"""
import os.path as osp
import sys

from mmolor.utils.cli import quiet_startup

quiet_startup()  # before mmengine.runner is imported

# benchmarks/ is in the checkout, beside mmolor/, and is not installed.
sys.path.insert(
    0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from benchmarks.forgetting import main  # noqa: E402

if __name__ == '__main__':
    main()
