#!/usr/bin/env bash
# Usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [args...]
# Environment: GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS,
# PYTHON (python).
exec bash "$(dirname "$0")/launch.sh" slurm "$1" "$2" train.py "$3" \
    --work-dir="$4" "${@:5}"
