# Copyright (c) mmolor contributors. All rights reserved.
"""Evaluations of fine-tuned models. Imports mmengine's runner."""
from .retention import format_table, upstream_retention, write_json

__all__ = ['upstream_retention', 'format_table', 'write_json']
