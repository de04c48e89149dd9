#!/usr/bin/env bash
# Submit a batch template with its resources taken from variables; see docs/slurm.md. From the repository root:
#
#   bash launch/slurm/submit.sh pretrain                                         # the template's #SBATCH lines
#   NODES=4 GPUS_PER_NODE=4 bash launch/slurm/submit.sh pretrain                 # 4 nodes x 4 GPUs, 4 tasks each
#   GPUS_PER_NODE=0 TASKS_PER_NODE=4 CPUS_PER_TASK=8 bash launch/slurm/submit.sh pretrain   # CPU-only nodes (gloo)
#   CONFIG=configs/demo.yaml GPUS_PER_NODE=0 TASKS_PER_NODE=2 bash launch/slurm/submit.sh pretrain --partition=cpu
#
# TEMPLATE is pretrain, finetune or the path of a batch script; options after it go to sbatch as they are. Slurm reads
# #SBATCH lines before any shell runs, so they cannot hold variables: this script turns the variables below into
# sbatch options, which beat the #SBATCH lines. A variable left unset keeps the template's line.
#   NODES           --nodes
#   GPUS_PER_NODE   --gpus-per-node, and --ntasks-per-node (one task per GPU); 0: no GPU request, CPU ranks
#   TASKS_PER_NODE  --ntasks-per-node; required with GPUS_PER_NODE=0, otherwise it must equal GPUS_PER_NODE
#   CPUS_PER_TASK   --cpus-per-task (the training process and its data-loading workers)
#   TIME            --time
# CONFIG, RUN_DIR, EXTRA_ARGS and PYTHON reach the job through the environment, as with a plain sbatch.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: [NODES=N] [GPUS_PER_NODE=G] [TASKS_PER_NODE=T] [CPUS_PER_TASK=C] [TIME=T] submit.sh TEMPLATE" \
         "[SBATCH OPTIONS...]" >&2
    exit 2
fi
template=$1
shift
case "$template" in
    pretrain|finetune) template="launch/slurm/$template.sbatch" ;;
esac
if [ ! -f "$template" ]; then
    echo "submit.sh: no batch template $template (pretrain, finetune or a path; run from the repository root)" >&2
    exit 2
fi

is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }
options=()
for name in NODES GPUS_PER_NODE TASKS_PER_NODE CPUS_PER_TASK; do
    value=${!name-}
    if [ -n "$value" ] && ! is_count "$value"; then
        echo "submit.sh: $name=$value is not a count" >&2
        exit 2
    fi
done
[ -n "${NODES:-}" ] && options+=("--nodes=$NODES")
if [ -n "${GPUS_PER_NODE:-}" ]; then
    options+=("--gpus-per-node=$GPUS_PER_NODE")
    if [ "$GPUS_PER_NODE" -eq 0 ]; then
        if [ -z "${TASKS_PER_NODE:-}" ]; then
            echo "submit.sh: GPUS_PER_NODE=0 runs CPU ranks: set TASKS_PER_NODE to the ranks per node" >&2
            exit 2
        fi
    elif [ -n "${TASKS_PER_NODE:-}" ] && [ "$TASKS_PER_NODE" -ne "$GPUS_PER_NODE" ]; then
        echo "submit.sh: TASKS_PER_NODE=$TASKS_PER_NODE must equal GPUS_PER_NODE=$GPUS_PER_NODE (one task per GPU)" >&2
        exit 2
    fi
    options+=("--ntasks-per-node=${TASKS_PER_NODE:-$GPUS_PER_NODE}")
elif [ -n "${TASKS_PER_NODE:-}" ]; then
    options+=("--ntasks-per-node=$TASKS_PER_NODE")
fi
[ -n "${CPUS_PER_TASK:-}" ] && options+=("--cpus-per-task=$CPUS_PER_TASK")
[ -n "${TIME:-}" ] && options+=("--time=$TIME")

# Slurm does not create the --output directory; without it the job dies silently. The templates write to
# runs/slurm/ unless an --output option here says otherwise.
own_output=0
for arg in "$@"; do
    case "$arg" in --output|--output=*|-o*) own_output=1 ;; esac
done
[ "$own_output" -eq 1 ] || mkdir -p runs/slurm
exec sbatch ${options[@]+"${options[@]}"} "$@" "$template"
