#!/usr/bin/env bash
# Run a training entry point as one Slurm task per GPU and requeue the job when the trainer asks for it.
#
#   bash launch/slurm/run.sh PYTHON SCRIPT [ARGS...]      (from a batch script, in the repository root)
#
# Every task gets its rank from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS (pretrain/distributed.py), so no hostfile
# is needed. When a task receives SIGUSR1 (time limit near) or SIGTERM (preemption), the trainer saves a
# checkpoint and exits with PREEMPTED_EXIT_CODE (pretrain/preemption.py); this script then runs
# `scontrol requeue`, and the requeued job resumes from that checkpoint (--resume auto).
set -uo pipefail

PREEMPTED_EXIT_CODE=75
# A run that keeps asking to be requeued without progress would loop forever; stop after this many restarts.
MAX_REQUEUES=${MAX_REQUEUES:-100}

if [ "$#" -lt 2 ]; then
    echo "usage: run.sh PYTHON SCRIPT [ARGS...]" >&2
    exit 2
fi

# Slurm signals the batch shell too on preemption; without a trap bash would die before the tasks finish saving.
trap 'echo "run.sh: got SIGTERM, waiting for the tasks to save their checkpoint" >&2' TERM

# Once one task has ended, the others get this many seconds to end too before srun kills them: enough for ranks
# that stop together after a checkpoint, and a crashed rank does not leave the rest hanging in a collective.
# (Not --kill-on-bad-exit: it could kill ranks still shutting down after exit 75, and srun would report the kill.)
TASK_EXIT_GRACE=${TASK_EXIT_GRACE:-120}

# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): pass it on.
srun --kill-on-bad-exit=0 --wait="$TASK_EXIT_GRACE" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$@" &
srun_pid=$!
while true; do
    wait "$srun_pid"
    rc=$?
    # A trapped signal interrupts `wait` (status > 128) while srun still runs: keep waiting.
    kill -0 "$srun_pid" 2>/dev/null || break
done

if [ "$rc" -ne "$PREEMPTED_EXIT_CODE" ]; then
    echo "run.sh: training exited with status $rc"
    exit "$rc"
fi
restarts=${SLURM_RESTART_COUNT:-0}
if [ "$restarts" -ge "$MAX_REQUEUES" ]; then
    echo "run.sh: checkpoint saved, but job ${SLURM_JOB_ID:-?} was already requeued $restarts times; not again" >&2
    exit "$rc"
fi
echo "run.sh: checkpoint saved after a preemption signal; requeueing job ${SLURM_JOB_ID:?} (restart $((restarts + 1)))"
if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "run.sh: scontrol requeue failed; resubmit with the same RUN_DIR to resume" >&2
    exit "$rc"
fi
