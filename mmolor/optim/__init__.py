# Copyright (c) mmolor contributors. All rights reserved.
from .constructor import OLOROptimWrapperConstructor, rollback_by_depth
from .layer_depth import LayerDepths, get_layer_depths
from .olor import OLORAdam, OLORAdamW, OLORSGD, rollback_

__all__ = [
    'OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_',
    'OLOROptimWrapperConstructor', 'rollback_by_depth', 'get_layer_depths',
    'LayerDepths'
]
