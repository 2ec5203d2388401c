# Copyright (c) mmolor contributors. All rights reserved.
from ._cpu_kernel import cpu_kernel, cpu_kernel_error
from .constructor import (OLOROptimWrapperConstructor, local_optimizer_class,
                          rollback_by_depth, validate_scope)
from .layer_depth import LayerDepths, get_layer_depths
from .olor import (OLORAdam, OLORAdamW, OLORSGD, is_anchored,
                   is_olor_optimizer, olor_optimizer, rollback_)

__all__ = [
    'OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_',
    'OLOROptimWrapperConstructor', 'rollback_by_depth', 'get_layer_depths',
    'LayerDepths', 'is_olor_optimizer', 'olor_optimizer', 'is_anchored',
    'validate_scope', 'local_optimizer_class', 'cpu_kernel',
    'cpu_kernel_error'
]
