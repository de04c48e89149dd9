"""The sbatch templates' shell logic with stub ``srun``/``scontrol``: requeue on the preemption code only."""

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.preemption import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "launch" / "slurm"

SRUN_STUB = """#!/bin/sh
for arg in "$@"; do echo "$arg"; done > "$STUB_LOG/srun.args"
[ -n "${STUB_SLEEP:-}" ] && touch "$STUB_LOG/srun.started" && sleep "$STUB_SLEEP"
exit "$STUB_RC"
"""
SCONTROL_STUB = """#!/bin/sh
echo "$@" >> "$STUB_LOG/scontrol.calls"
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
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
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
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("name", ["pretrain.sbatch", "finetune.sbatch", "run.sh"])
def test_scripts_parse(name):
    subprocess.run(["bash", "-n", str(SLURM_DIR / name)], check=True)


@pytest.mark.parametrize("name", ["pretrain.sbatch", "finetune.sbatch"])
def test_templates_ask_for_the_signal_and_requeue(name):
    lines = (SLURM_DIR / name).read_text().splitlines()
    for option in ("--signal=USR1@300", "--requeue", "--open-mode=append", "--ntasks-per-node=8",
                   "--gpus-per-node=8"):
        assert f"#SBATCH {option}" in lines


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


def test_sigterm_to_the_batch_shell_still_waits_and_requeues(tmp_path):
    env = _env(tmp_path, PREEMPTED_EXIT_CODE, STUB_SLEEP="1")
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "pretrain.sbatch")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "srun.started").exists():
        assert time.monotonic() < deadline, "srun stub never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what Slurm does to the batch shell on preemption
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "got SIGTERM, waiting for the tasks to save their checkpoint" in err
    assert _requeues(tmp_path) == ["requeue 4242"]
