# Copyright (c) mmolor contributors. All rights reserved.
"""The demo's and the benchmarks' building blocks; not part of mmolor.

They live in the checkout beside ``mmolor/``, import it and are not
installed with it. ``tools/`` puts the checkout on ``sys.path`` to
import them; the tests run from the checkout's root. Some need the ``demo``
extras (scikit-learn, matplotlib).

- ``protocol``, ``upstream``, ``retention``, ``l2sp``, ``report``: the
  upstream -> downstream forgetting protocol of ``tools/demo.py`` and
  ``tools/analysis_tools/forgetting_benchmark.py``;
- ``forgetting``: that benchmark's presets, arguments, worker pool and the
  merging of its JSONs (the tool runs its ``main``);
- ``tasks``, ``benchmark``, ``stats``, ``selection``: the benchmark's
  regimes, task families (det, seg, cls configs under ``configs/demo/``)
  and methods, its jobs, the paired statistics and the tuning selection;
- ``optimizer``, ``adamb``: the optimizer timing benchmark
  (``tools/analysis_tools/benchmark_optimizer.py``) and the authors' AdamB
  loop it times (also the tests' reference AdamB);
- ``rollback``: the per-layer rollback strengths a config gives
  (``tools/analysis_tools/plot_rollback.py``);
- ``census``: the block depths on every upstream backbone
  (``tools/analysis_tools/backbone_census.py``);
- ``datasets``: the data writers (bundled digits, synthetic COCO and
  ADE20K) used by the demo, the benchmarks and the end-to-end tests.
"""
