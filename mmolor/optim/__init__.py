# Copyright (c) mmolor contributors. All rights reserved.
from .olor import OLORAdam, OLORAdamW, OLORSGD, rollback_

__all__ = ['OLORAdamW', 'OLORAdam', 'OLORSGD', 'rollback_']
