#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [train.py arguments...]
# GPUS processes per node, started with torchrun (gloo when no GPU is found).
# Environment: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR
# (127.0.0.1), PYTHON (python).
exec bash "$(dirname "$0")/launch.sh" torchrun "$2" train.py "$1" "${@:3}"
