# Copyright (c) mmolor contributors. All rights reserved.
import os.path as osp
import sys

# `reference.py` and the data helpers live beside the tests.
sys.path.insert(0, osp.dirname(__file__))
