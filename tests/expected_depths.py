# Copyright (c) mmolor contributors. All rights reserved.
"""Expected depth of a backbone parameter, from its name.

Written from the architectures (a regex per family), independently of
mmolor's rules, for the constructor and config tests.
"""
import re


def resnet_depth(name, sizes, mode):
    m = re.match(r'backbone\.layer(\d+)\.(\d+)\.', name)
    if not m:
        return 0  # stem
    s, b = int(m.group(1)) - 1, int(m.group(2))
    return s + 1 if mode == 'stage' else sum(sizes[:s]) + b + 1


def swin_depth(name, sizes, mode):
    m = re.match(r'backbone\.stages\.(\d+)\.blocks\.(\d+)\.', name)
    if m:
        s, b = int(m.group(1)), int(m.group(2))
        return s + 1 if mode == 'stage' else sum(sizes[:s]) + b + 1
    m = re.match(r'backbone\.(?:stages\.(\d+)\.downsample|norm(\d+))\.',
                 name)
    if m:
        s = int(m.group(1) or m.group(2))
        return s + 1 if mode == 'stage' else sum(sizes[:s + 1])
    return 0  # patch embedding, absolute position embedding


def vit_depth(name, num_layers, mode):
    m = re.match(r'backbone\.layers\.(\d+)\.', name)
    if m:
        return 1 if mode == 'stage' else int(m.group(1)) + 1
    if name.startswith('backbone.ln1.'):  # the final norm
        return 1 if mode == 'stage' else num_layers
    return 0
