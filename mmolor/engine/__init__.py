# Copyright (c) mmolor contributors. All rights reserved.
from .drift import layer_drift, layer_labels, relative_drift
from .hooks import OLORDriftHook

__all__ = ['OLORDriftHook', 'relative_drift', 'layer_labels', 'layer_drift']
