#!/usr/bin/env bash
# The launcher behind dist_train.sh, dist_test.sh, slurm_train.sh and
# slurm_test.sh: runs tools/SCRIPT --launcher {pytorch,slurm} ARGS... in
# every process.
#   tools/launch.sh torchrun GPUS SCRIPT [ARGS...]
#       GPUS processes per node, started with torchrun (gloo when no GPU is
#       found). Environment: NNODES (1), NODE_RANK (0), PORT (29500),
#       MASTER_ADDR (127.0.0.1).
#   tools/launch.sh slurm PARTITION JOB_NAME SCRIPT [ARGS...]
#       srun's tasks. Environment: GPUS (8), GPUS_PER_NODE (8),
#       CPUS_PER_TASK (5), SRUN_ARGS.
# Both: PYTHON (python).

if [ "$1" != torchrun ] && [ "$1" != slurm ]; then
    echo "Usage: $0 torchrun GPUS SCRIPT [ARGS...]" \
        "| $0 slurm PARTITION JOB_NAME SCRIPT [ARGS...]" >&2
    exit 2
fi
if [ "$1" = torchrun ] && ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: GPUS: '$2' (expected a number of processes >= 1)" >&2
    exit 2
fi
TOOLS=$(dirname "$0")
PYTHON=${PYTHON:-"python"}
if ! $PYTHON -c 'import torch' 2>/dev/null; then
    echo "$0: '$PYTHON' cannot import torch. Activate mmolor's environment" \
        "first (source .venv/bin/activate) or set PYTHON=.venv/bin/python." >&2
    exit 1
fi
export PYTHONPATH="$TOOLS/..":$PYTHONPATH

case $1 in
torchrun)
    exec $PYTHON -m torch.distributed.run \
        --nnodes=${NNODES:-1} \
        --node_rank=${NODE_RANK:-0} \
        --master_addr=${MASTER_ADDR:-"127.0.0.1"} \
        --nproc_per_node=$2 \
        --master_port=${PORT:-29500} \
        "$TOOLS/$3" --launcher pytorch "${@:4}"
    ;;
slurm)
    GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    set -x
    exec srun -p "$2" \
        --job-name="$3" \
        --gres=gpu:$GPUS_PER_NODE \
        --ntasks=${GPUS:-8} \
        --ntasks-per-node=$GPUS_PER_NODE \
        --cpus-per-task=${CPUS_PER_TASK:-5} \
        --kill-on-bad-exit=1 \
        ${SRUN_ARGS} \
        $PYTHON -u "$TOOLS/$4" --launcher slurm "${@:5}"
    ;;
esac
