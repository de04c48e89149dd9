"""The sbatch templates' and submit.sh's shell logic with stub ``srun``/``scontrol``/``sbatch``: requeue on the
preemption code only, and not when Slurm requeues or cancels the job itself. tests/test_slurm_cluster.py runs the
same scripts on a real Slurm."""

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.cluster.distributed import PEER_LOST_EXIT_CODE
from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "launch" / "slurm"

SRUN_STUB = """#!/bin/sh
for arg in "$@"; do echo "$arg"; done > "$STUB_LOG/srun.args"
echo "${CUDA_VISIBLE_DEVICES-unset}" > "$STUB_LOG/srun.cuda"
echo "${OMP_NUM_THREADS-unset}" > "$STUB_LOG/srun.omp"
trap 'touch "$STUB_LOG/srun.usr1"' USR1
if [ -n "${STUB_SLEEP:-}" ]; then
    touch "$STUB_LOG/srun.started"
    sleep "$STUB_SLEEP" &
    while ! wait $!; do :; done  # a trapped signal interrupts wait: keep waiting for the sleep
fi
# STUB_PARENT_SIGNAL: a signal for the batch shell (run.sh, this stub's grandparent) at STUB_PARENT_WHEN:
# `before` this stub exits
# (the shell's trap has run by then), `at-exit` (just before), or `after-exit` (STUB_PARENT_DELAY seconds after).
batch=$PPID  # run.sh, or the subshell of run.sh that runs srun
up=$(cut -d' ' -f4 "/proc/$PPID/stat")
grep -q run.sh "/proc/$up/cmdline" 2>/dev/null && batch=$up
case "${STUB_PARENT_WHEN:-}" in
    before) kill -"$STUB_PARENT_SIGNAL" "$batch"; sleep 0.3 ;;
    at-exit) kill -"$STUB_PARENT_SIGNAL" "$batch" ;;
    after-exit) (sleep "$STUB_PARENT_DELAY"; kill -"$STUB_PARENT_SIGNAL" "$batch" 2>/dev/null) >/dev/null 2>&1 & ;;
esac
# STUB_REPORT: srun's report of its tasks, appended to the job's stderr file STUB_STDERR
[ -z "${STUB_REPORT:-}" ] || printf '%b\\n' "$STUB_REPORT" >> "$STUB_STDERR"
exit "$STUB_RC"
"""
# `scontrol -o show job` answers STUB_JOB_INFO (or fails when STUB_SHOW_FAILS is set); every call is logged.
SCONTROL_STUB = """#!/bin/sh
echo "$@" >> "$STUB_LOG/scontrol.calls"
if [ "$1" = "-o" ] && [ "$2" = "show" ]; then
    [ -z "${STUB_SHOW_FAILS:-}" ] || exit 1
    echo "${STUB_JOB_INFO:-JobId=$4 JobState=RUNNING Reason=None Requeue=1 Restarts=${SLURM_RESTART_COUNT:-0}}"
fi
"""
SBATCH_STUB = """#!/bin/sh
for arg in "$@"; do echo "$arg"; done > "$STUB_LOG/sbatch.args"
echo "Submitted batch job 4242"
"""


def _stub(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(tmp_path: Path, rc: int, **extra: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _stub(bin_dir, "srun", SRUN_STUB)
    _stub(bin_dir, "scontrol", SCONTROL_STUB)
    _stub(bin_dir, "sbatch", SBATCH_STUB)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STUB_LOG=str(tmp_path), STUB_RC=str(rc),
               SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="4242", SLURM_JOB_NAME="mixer-pretrain",
               SLURM_CPUS_PER_TASK="12", CONFIG=str(config))
    env.update(extra)
    return env


def _run(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / script)], env=env, cwd=env["STUB_LOG"],
                          capture_output=True, text=True, timeout=30)


def _requeues(tmp_path: Path) -> list[str]:
    calls = tmp_path / "scontrol.calls"
    return [c for c in calls.read_text().splitlines() if c.startswith("requeue")] if calls.exists() else []


def _signalled(script: str, env: dict, signum: int) -> subprocess.Popen:
    """Start `script` with a slow srun stub, send `signum` to the batch shell while srun runs; the process, ended."""
    env = {"STUB_SLEEP": "1", **env}
    proc = subprocess.Popen(["bash", str(SLURM_DIR / script)], env=env, cwd=env["STUB_LOG"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = Path(env["STUB_LOG"]) / "srun.started"
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "srun stub never started"
        time.sleep(0.02)
    time.sleep(0.1)  # srun has set its trap
    proc.send_signal(signum)
    proc.out, proc.err = proc.communicate(timeout=30)
    return proc


@pytest.mark.parametrize("name", ["pretrain.sbatch", "finetune.sbatch", "run.sh", "submit.sh"])
def test_scripts_parse(name):
    subprocess.run(["bash", "-n", str(SLURM_DIR / name)], check=True)


@pytest.mark.parametrize("name", ["pretrain.sbatch", "finetune.sbatch"])
def test_templates_ask_for_the_signal_and_requeue(name):
    lines = (SLURM_DIR / name).read_text().splitlines()
    for option in ("--signal=USR1@300", "--requeue", "--open-mode=append", "--ntasks-per-node=8",
                   "--gpus-per-node=8"):
        assert f"#SBATCH {option}" in lines


def test_a_lost_peer_requeues_the_job(tmp_path):
    result = _run("pretrain.sbatch", _env(tmp_path, PEER_LOST_EXIT_CODE))
    assert result.returncode == 0, result.stderr
    assert _requeues(tmp_path) == ["requeue 4242"]
    assert "lost contact with another rank (dead, on a lost node, or hung); requeueing job 4242" in result.stdout


def test_preemption_exit_code_requeues_the_job(tmp_path):
    result = _run("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE))
    assert result.returncode == 0, result.stderr
    assert _requeues(tmp_path) == ["requeue 4242"]
    assert "requeueing job 4242 (restart 1)" in result.stdout


def test_srun_runs_the_entry_point_with_resume_and_extra_args(tmp_path):
    env = _env(tmp_path, 0, RUN_DIR="runs/x", EXTRA_ARGS="--set train.steps=10  --set data.batch=8")
    result = _run("pretrain.sbatch", env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "srun.args").read_text().splitlines() == [
        "--kill-on-bad-exit=0", "--wait=120", "--cpus-per-task=12", ".venv/bin/python", "launch/pretrain.py",
        "--config", env["CONFIG"], "--run-dir", "runs/x", "--resume", "auto",
        "--set", "train.steps=10", "--set", "data.batch=8",
    ]
    assert _requeues(tmp_path) == []


def test_finetune_template_runs_finetune_with_a_default_run_dir(tmp_path):
    result = _run("finetune.sbatch", _env(tmp_path, 0, SLURM_JOB_NAME="mixer-finetune"))
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "srun.args").read_text().splitlines()
    assert args[4:] == ["launch/finetune.py", "--config", str(tmp_path / "c.yaml"), "--run-dir",
                        "runs/mixer-finetune-4242", "--resume", "auto"]


@pytest.mark.parametrize("rc", [1, 137])
def test_failures_are_passed_on_without_requeue(tmp_path, rc):
    result = _run("pretrain.sbatch", _env(tmp_path, rc))
    assert result.returncode == rc
    assert _requeues(tmp_path) == []
    assert f"training exited with status {rc}" in result.stdout


def test_requeue_stops_after_max_requeues(tmp_path):
    env = _env(tmp_path, PREEMPTED_EXIT_CODE, SLURM_RESTART_COUNT="3", MAX_REQUEUES="3")
    result = _run("pretrain.sbatch", env)
    assert result.returncode == PREEMPTED_EXIT_CODE
    assert _requeues(tmp_path) == []
    assert "already requeued 3 times; not again" in result.stderr


def test_missing_config_is_a_one_line_error(tmp_path):
    result = _run("pretrain.sbatch", _env(tmp_path, 0, CONFIG="configs/nope.yaml"))
    assert result.returncode == 2
    assert result.stderr == ("pretrain.sbatch: config not found: configs/nope.yaml "
                             "(submit from the repository root, or set CONFIG)\n")
    assert not (tmp_path / "srun.args").exists()


def test_sigterm_at_the_time_limit_still_waits_and_requeues(tmp_path):
    # The time limit itself (SIGUSR1 came too late): Slurm sends SIGTERM to the batch shell and the tasks.
    info = "JobId=4242 JobState=COMPLETING Reason=TimeLimit Restarts=0"
    proc = _signalled("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_JOB_INFO=info), signal.SIGTERM)
    assert proc.returncode == 0, proc.err
    assert "got SIGTERM, waiting for the tasks to save their checkpoint" in proc.err
    assert _requeues(tmp_path) == ["requeue 4242"]


def test_sigterm_of_a_preemption_requeues(tmp_path):
    info = "JobId=4242 JobState=COMPLETING Reason=None Restarts=0 PreemptEligibleTime=2026-01-01T00:00:00 " \
           "PreemptTime=2026-01-01T10:00:00"
    proc = _signalled("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_JOB_INFO=info), signal.SIGTERM)
    assert proc.returncode == 0, proc.err
    assert _requeues(tmp_path) == ["requeue 4242"]


def test_scancel_is_not_turned_into_a_requeue(tmp_path):
    # scancel: SIGTERM to the batch shell and the tasks; they checkpoint and exit 75, the job stays cancelled.
    info = "JobId=4242 JobState=COMPLETING Reason=None Restarts=0 PreemptEligibleTime=2026-01-01T00:00:00 " \
           "PreemptTime=None"
    proc = _signalled("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_JOB_INFO=info), signal.SIGTERM)
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.err
    assert _requeues(tmp_path) == []
    assert "job 4242 was cancelled, so it is not requeued" in proc.out


@pytest.mark.parametrize("restart_count", ["", "2"])
def test_a_job_slurm_requeued_itself_is_not_requeued_again(tmp_path, restart_count):
    # scontrol requeue (or a preemption in requeue mode) raised the restart count before signalling.
    restarts = int(restart_count or 0) + 1
    info = f"JobId=4242 JobState=COMPLETING Reason=None Restarts={restarts}"
    extra = {"STUB_JOB_INFO": info, **({"SLURM_RESTART_COUNT": restart_count} if restart_count else {})}
    proc = _signalled("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE, **extra), signal.SIGTERM)
    assert proc.returncode == 0, proc.err
    assert _requeues(tmp_path) == []
    assert f"Slurm has requeued job 4242 itself (restart {restarts})" in proc.out
    assert "requeue failed" not in proc.err


def test_sigterm_when_scontrol_cannot_answer_does_not_requeue(tmp_path):
    env = _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_SHOW_FAILS="1")
    proc = _signalled("pretrain.sbatch", env, signal.SIGTERM)
    assert proc.returncode == PREEMPTED_EXIT_CODE
    assert _requeues(tmp_path) == []
    assert "cannot tell whether job 4242 was cancelled" in proc.err


@pytest.mark.parametrize(("when", "delay"), [("before", "0"), ("at-exit", "0"), ("after-exit", "0"),
                                            ("after-exit", "0.005"), ("after-exit", "0.02")])
@pytest.mark.parametrize("signame", ["USR1", "TERM"])
def test_the_exit_status_survives_a_signal_at_any_point(tmp_path, signame, when, delay):
    # A signal that interrupts `wait` while srun exits (or just after) must not replace srun's status (75) by the
    # trap's 128 + signal: the job would then be neither requeued nor reported as preempted. Repeated, since the
    # window is a matter of scheduling.
    info = "JobId=4242 JobState=COMPLETING Reason=TimeLimit Restarts=0"
    for attempt in range(15):
        (tmp_path / "scontrol.calls").unlink(missing_ok=True)
        env = _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_JOB_INFO=info, STUB_PARENT_SIGNAL=signame,
                   STUB_PARENT_WHEN=when, STUB_PARENT_DELAY=delay)
        result = _run("pretrain.sbatch", env)
        assert result.returncode == 0, f"attempt {attempt}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        assert _requeues(tmp_path) == ["requeue 4242"], f"attempt {attempt}"


@pytest.mark.parametrize(("earlier", "report", "requeued"), [
    ("", "srun: error: n2: task 1: Killed\\nsrun: error: n1: task 0: Exited with exit code 76", True),
    ("", "srun: error: n3: tasks 4-7: Killed\\nsrun: error: n1: tasks 0-3: Exited with exit code 76", True),
    # a killed task and no rank that lost contact (an OOM kill of a 1-node job); a 76 of an earlier run does not count
    ("srun: error: n1: task 0: Exited with exit code 76\n", "srun: error: n1: task 0: Killed", False),
])
def test_a_killed_task_with_a_survivor_that_lost_it_requeues(tmp_path, earlier, report, requeued):
    # srun's status is the highest of its tasks': 137 for a task killed by kill -9 beats the survivors' 76.
    stderr = tmp_path / "job.out"
    stderr.write_text(earlier)
    info = f"JobId=4242 JobState=RUNNING Reason=None Restarts=0 StdErr={stderr}"
    result = _run("pretrain.sbatch", _env(tmp_path, 137, STUB_JOB_INFO=info, STUB_REPORT=report,
                                          STUB_STDERR=str(stderr)))
    assert _requeues(tmp_path) == (["requeue 4242"] if requeued else []), result.stdout + result.stderr
    assert result.returncode == (0 if requeued else 137), result.stdout + result.stderr
    assert ("a task died of signal 9 and another exited with 76" in result.stdout) == requeued


def test_sigusr1_to_the_batch_shell_reaches_the_tasks_and_requeues(tmp_path):
    # `#SBATCH --signal=B:USR1@300` or `scancel --signal=USR1 --batch`: only the batch shell gets it.
    proc = _signalled("pretrain.sbatch", _env(tmp_path, PREEMPTED_EXIT_CODE), signal.SIGUSR1)
    assert proc.returncode == 0, proc.err
    assert "got SIGUSR1, passing it on to the tasks" in proc.err
    assert (tmp_path / "srun.usr1").exists()
    assert _requeues(tmp_path) == ["requeue 4242"]


@pytest.mark.parametrize("name", ["pretrain.sbatch", "finetune.sbatch"])
@pytest.mark.parametrize(("extra", "threads"), [({}, "12"), ({"OMP_NUM_THREADS": "3"}, "3")])
def test_openmp_threads_follow_cpus_per_task(tmp_path, name, extra, threads):
    result = _run(name, _env(tmp_path, 0, **extra))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "srun.omp").read_text() == f"{threads}\n"


@pytest.mark.parametrize(("gpus", "cuda"), [("0", ""), ("8", "unset"), (None, "unset")])
def test_no_gpu_request_hides_the_gpus(tmp_path, gpus, cuda):
    extra = {"SLURM_GPUS_PER_NODE": gpus} if gpus is not None else {}
    result = _run("pretrain.sbatch", _env(tmp_path, 0, **extra))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "srun.cuda").read_text() == f"{cuda}\n"


def _submit(tmp_path: Path, *args: str, cwd: Path | None = None, **variables: str) -> subprocess.CompletedProcess:
    env = _env(tmp_path, 0, **variables)
    return subprocess.run(["bash", str(SLURM_DIR / "submit.sh"), *args], env=env, cwd=cwd or tmp_path,
                          capture_output=True, text=True, timeout=30)


def _sbatch_args(tmp_path: Path) -> list[str]:
    return (tmp_path / "sbatch.args").read_text().splitlines()


def test_submit_turns_variables_into_sbatch_options(tmp_path):
    template = str(SLURM_DIR / "pretrain.sbatch")
    result = _submit(tmp_path, template, "--partition=a100", NODES="4", GPUS_PER_NODE="4", CPUS_PER_TASK="16",
                     TIME="2-00:00:00")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Submitted batch job 4242\n"
    assert _sbatch_args(tmp_path) == ["--nodes=4", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=16",
                                      "--time=2-00:00:00", "--partition=a100", template]
    assert (tmp_path / "runs" / "slurm").is_dir()  # the templates' --output directory


def test_submit_cpu_ranks_ask_for_no_gpu(tmp_path):
    result = _submit(tmp_path, "pretrain", "--output=/tmp/x-%j.out", cwd=REPO, GPUS_PER_NODE="0",
                     TASKS_PER_NODE="2")
    assert result.returncode == 0, result.stderr
    assert _sbatch_args(tmp_path) == ["--gpus-per-node=0", "--ntasks-per-node=2", "--output=/tmp/x-%j.out",
                                      "launch/slurm/pretrain.sbatch"]


def test_submit_without_variables_keeps_the_template_lines(tmp_path):
    template = str(SLURM_DIR / "finetune.sbatch")
    result = _submit(tmp_path, template, **{"NODES": ""})
    assert result.returncode == 0, result.stderr
    assert _sbatch_args(tmp_path) == [template]


def test_submit_finds_a_template_by_name(tmp_path):
    result = _submit(tmp_path, "finetune", "-o", "/tmp/ft-%j.out", cwd=REPO)  # an --output: no runs/slurm here
    assert result.returncode == 0, result.stderr
    assert _sbatch_args(tmp_path) == ["-o", "/tmp/ft-%j.out", "launch/slurm/finetune.sbatch"]


@pytest.mark.parametrize(("variables", "message"), [
    ({"GPUS_PER_NODE": "0"}, "GPUS_PER_NODE=0 runs CPU ranks: set TASKS_PER_NODE to the ranks per node"),
    ({"GPUS_PER_NODE": "8", "TASKS_PER_NODE": "4"}, "TASKS_PER_NODE=4 must equal GPUS_PER_NODE=8 (one task per GPU)"),
    ({"NODES": "two"}, "NODES=two is not a count"),
])
def test_submit_refuses_inconsistent_variables_in_one_line(tmp_path, variables, message):
    result = _submit(tmp_path, str(SLURM_DIR / "pretrain.sbatch"), **variables)
    assert result.returncode == 2
    assert result.stderr == f"submit.sh: {message}\n"
    assert not (tmp_path / "sbatch.args").exists()


def test_submit_refuses_an_unknown_template(tmp_path):
    result = _submit(tmp_path, "pretrian")
    assert result.returncode == 2
    assert "no batch template pretrian" in result.stderr
