#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py arguments...]
# GPUS processes per node, started with torchrun (gloo when no GPU is found).
# Environment: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR
# (127.0.0.1), PYTHON (python).

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-"python"}
if ! $PYTHON -c 'import torch' 2>/dev/null; then
    echo "$0: '$PYTHON' cannot import torch. Activate mmolor's environment" \
        "first (source .venv/bin/activate) or set PYTHON=.venv/bin/python." >&2
    exit 1
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
$PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$(dirname "$0")/test.py" \
    $CONFIG \
    $CHECKPOINT \
    --launcher pytorch \
    "${@:4}"
