# Copyright (c) mmolor contributors. All rights reserved.
"""The demo's and the forgetting benchmark's building blocks.

Needs the ``demo`` extras (scikit-learn, matplotlib); ``import mmolor`` does
not import this package.
"""
from .l2sp import L2SPMixin, l2sp_model_cfg
from .protocol import (DEMO_CONFIGS, Upstream, measure_backbone,
                       prepare_scenes, prepare_upstream)
from .retention import extract_features, upstream_scores
from .rollback import plot_rollback, rollback_by_layer
from .upstream import (DEMO_BACKBONE, UpstreamClassifier, build_backbone,
                       pretrain_upstream)

__all__ = [
    'L2SPMixin', 'l2sp_model_cfg', 'DEMO_CONFIGS', 'Upstream',
    'measure_backbone', 'prepare_scenes', 'prepare_upstream',
    'extract_features', 'upstream_scores', 'plot_rollback',
    'rollback_by_layer', 'DEMO_BACKBONE', 'UpstreamClassifier',
    'build_backbone', 'pretrain_upstream'
]
