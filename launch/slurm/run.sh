#!/usr/bin/env bash
# Run a training entry point as Slurm tasks (one per GPU, or CPU ranks) and requeue the job when the trainer asks.
#
#   bash launch/slurm/run.sh PYTHON SCRIPT [ARGS...]      (from a batch script, in the repository root)
#
# Every task gets its rank from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS (pretrain/cluster/distributed.py), so no hostfile
# is needed. When a task receives SIGUSR1 (time limit near) or SIGTERM (preemption, scancel, scontrol requeue), the
# trainer saves a checkpoint and exits with PREEMPTED_EXIT_CODE (pretrain/cluster/preemption.py). This script then decides
# what follows from who sent the signal (docs/slurm.md, "Time limits and preemption"):
#   - Slurm requeues the job itself (`scontrol requeue`, preemption in requeue mode): its restart count has gone up
#     since this run started; nothing to do.
#   - the job was cancelled (`scancel`): the batch shell got SIGTERM too and Slurm names neither a time limit nor a
#     preemption; it stays cancelled (resubmit with the same RUN_DIR to resume).
#   - anything else (SIGUSR1 before the time limit, a preemption's grace-time SIGTERM, the time limit itself, a
#     preemption in cancel mode): `scontrol requeue`, and the requeued job resumes from the checkpoint
#     (--resume auto).
set -uo pipefail

PREEMPTED_EXIT_CODE=75
# A task lost contact with another (a rank died, its node was lost, or it hung past train.collective_timeout_s):
# pretrain/cluster/distributed.py's PEER_LOST_EXIT_CODE. Requeued like a preemption; the job resumes from the last checkpoint.
PEER_LOST_EXIT_CODE=76
# A run that keeps asking to be requeued without progress would loop forever; stop after this many restarts.
MAX_REQUEUES=${MAX_REQUEUES:-100}

if [ "$#" -lt 2 ]; then
    echo "usage: run.sh PYTHON SCRIPT [ARGS...]" >&2
    exit 2
fi

# The restart count this run started with (Slurm sets it from the first requeue on).
restarts_at_start=${SLURM_RESTART_COUNT:-0}

job_field() {  # job_field NAME: the value of NAME=... in $job_info (`scontrol -o show job`), empty when absent
    [[ " $job_info " =~ \ $1=([^ ]*) ]] && echo "${BASH_REMATCH[1]}"
}
# srun's exit status is the highest of its tasks', a task killed by a signal counting as 128 + the signal: when a
# rank is killed (kill -9, OOM, its node lost) and the others exit 76, srun says 137. Its report of each task
# ("srun: error: n1: task 0: Exited with exit code 76") goes to the job's stderr file; where this run's part of it
# begins, to tell the two apart after srun has ended.
job_info=$(scontrol -o show job "${SLURM_JOB_ID:?}" 2>/dev/null) || job_info=
stderr_file=$(job_field StdErr)
stderr_offset=$(stat -c %s "$stderr_file" 2>/dev/null) || stderr_offset=
srun_pid=
# srun's pid and exit status, written by the subshell that runs it (below).
state_dir=$(mktemp -d "${TMPDIR:-/tmp}/run.sh.XXXXXX") || exit 2
pid_file=$state_dir/srun.pid
status_file=$state_dir/srun.status
trap 'rm -rf "$state_dir"' EXIT

# Slurm sends SIGTERM to the batch shell when it ends the job (scancel, scontrol requeue, a preemption without grace
# time, the time limit), at the same moment as to the tasks; without a trap bash would die before the tasks finish
# saving. srun gets it too, and asks to kill the tasks, but Slurm refuses to signal the steps of a job it is already
# ending ("Job step aborted: Waiting up to N seconds"), so the tasks have KillWait seconds to save and exit.
got_term=0
trap 'got_term=1; echo "run.sh: got SIGTERM, waiting for the tasks to save their checkpoint" >&2' TERM
# SIGUSR1 for the batch shell (`#SBATCH --signal=B:USR1@300`, `scancel --signal=USR1 --batch` or `--full`): pass it
# on to the tasks through srun (which forwards it), instead of dying of it.
trap 'echo "run.sh: got SIGUSR1, passing it on to the tasks" >&2; pass_usr1' USR1
pass_usr1() {
    [ -n "$srun_pid" ] || srun_pid=$(cat "$pid_file" 2>/dev/null)
    [ -n "$srun_pid" ] && kill -USR1 "$srun_pid" 2>/dev/null
}

# Once one task has ended, the others get this many seconds to end too before srun kills them: enough for ranks
# that stop together after a checkpoint, and a crashed rank does not leave the rest hanging in a collective.
# (Not --kill-on-bad-exit: it could kill ranks still shutting down after exit 75, and srun would report the kill.)
TASK_EXIT_GRACE=${TASK_EXIT_GRACE:-120}

# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): pass it on.
# srun's exit status comes from a subshell that ignores the signals while it waits. This shell's traps interrupt its
# own `wait` (status 128 + the signal), and bash loses a child's status for good when that happens as the child
# exits (a later `wait` answers -1 or 127), so the status would be the trap's and a preempted job not requeued. The
# subshell starts srun with the traps above replaced by no-ops (srun gets the default handlers, as from this shell),
# then ignores them: its `wait` returns srun's own status.
(
    trap ':' TERM USR1
    srun --kill-on-bad-exit=0 --wait="$TASK_EXIT_GRACE" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$@" &
    child=$!
    echo "$child" > "$pid_file"
    trap '' TERM USR1
    wait "$child"
    echo "$?" > "$status_file.partial" && mv "$status_file.partial" "$status_file"
) &
runner_pid=$!
# A trapped signal interrupts `wait` while the subshell still runs: keep waiting until it has gone.
while kill -0 "$runner_pid" 2>/dev/null; do
    wait "$runner_pid"
done
rc=$(cat "$status_file" 2>/dev/null) || rc=
if ! [[ "$rc" =~ ^[0-9]+$ ]]; then
    echo "run.sh: srun's exit status was not recorded (the subshell that ran it was killed)" >&2
    exit 1
fi

# A task died of a signal and another lost contact with it: the job is requeued as for 76 alone.
if [ "$rc" -gt 128 ] && [ -n "$stderr_offset" ] && tail -c +"$((stderr_offset + 1))" "$stderr_file" 2>/dev/null |
        grep -Eq "^srun: error: [^ ]+: tasks? [0-9,-]+: Exited with exit code $PEER_LOST_EXIT_CODE\$"; then
    echo "run.sh: a task died of signal $((rc - 128)) and another exited with $PEER_LOST_EXIT_CODE (lost contact" \
         "with it)"
    rc=$PEER_LOST_EXIT_CODE
fi

case "$rc" in
    "$PREEMPTED_EXIT_CODE") what="checkpoint saved after a preemption signal" ;;
    "$PEER_LOST_EXIT_CODE") what="a task lost contact with another rank (dead, on a lost node, or hung)" ;;
    *)
        echo "run.sh: training exited with status $rc"
        exit "$rc"
        ;;
esac

# What Slurm says about the job now. While the job ends, JobState reads COMPLETING whatever it ends as, so the
# decision rests on the restart count, the reason (TimeLimit) and the preemption time.
job_info=$(scontrol -o show job "${SLURM_JOB_ID:?}" 2>/dev/null) || job_info=
restarts_now=$(job_field Restarts)
if [[ "$restarts_now" =~ ^[0-9]+$ ]] && [ "$restarts_now" -gt "$restarts_at_start" ]; then
    echo "run.sh: checkpoint saved; Slurm has requeued job $SLURM_JOB_ID itself (restart $restarts_now), it resumes" \
         "from the checkpoint"
    exit 0
fi
if [ "$got_term" -eq 1 ]; then
    reason=$(job_field Reason)
    preempt_time=$(job_field PreemptTime)
    if [ -z "$job_info" ]; then
        echo "run.sh: checkpoint saved, but scontrol cannot tell whether job $SLURM_JOB_ID was cancelled;" \
             "not requeueing it: resubmit with the same RUN_DIR to resume" >&2
        exit "$rc"
    fi
    if [ "$reason" != "TimeLimit" ] && { [ -z "$preempt_time" ] || [ "$preempt_time" = "None" ]; }; then
        echo "run.sh: checkpoint saved; job $SLURM_JOB_ID was cancelled, so it is not requeued (resubmit with the" \
             "same RUN_DIR to resume)"
        exit "$rc"
    fi
fi

if [ "$restarts_at_start" -ge "$MAX_REQUEUES" ]; then
    echo "run.sh: checkpoint saved, but job $SLURM_JOB_ID was already requeued $restarts_at_start times; not again" >&2
    exit "$rc"
fi
echo "run.sh: $what; requeueing job $SLURM_JOB_ID (restart $((restarts_at_start + 1)))"
if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "run.sh: scontrol requeue failed; resubmit with the same RUN_DIR to resume" >&2
    exit "$rc"
fi
