"""Signals only set a flag; the loop stops after the step it was in, with the requeue exit code."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, any_rank_requested

WORKER = Path(__file__).resolve().parent / "helpers_preempt_worker.py"


def test_sigusr1_stops_a_running_loop_after_the_current_step():
    proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert [proc.stdout.readline() for _ in range(3)] == ["step 1\n", "step 2\n", "inside step 3\n"]
        proc.send_signal(signal.SIGUSR1)  # the worker said it is blocked inside step 3
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out == f"step 3\ncheckpoint saved at step 3; signal {int(signal.SIGUSR1)}\n", err
    assert proc.returncode == PREEMPTED_EXIT_CODE == 75


def test_flag_records_the_first_signal_and_restores_handlers():
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR2)}
    flag = PreemptionFlag(signals=(signal.SIGUSR1, signal.SIGUSR2))
    try:
        assert not flag.requested and not any_rank_requested(flag)
        assert signal.getsignal(signal.SIGTERM) is previous[signal.SIGTERM]  # not asked for, not touched
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.requested and any_rank_requested(flag)
        assert flag.received == signal.SIGUSR2
    finally:
        flag.close()
    assert {s: signal.getsignal(s) for s in previous} == previous


def test_close_is_idempotent_and_flag_works_as_context_manager():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionFlag() as flag:
        assert signal.getsignal(signal.SIGTERM) != before
    flag.close()
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_code_matches_the_slurm_runner():
    run_sh = (Path(__file__).resolve().parents[1] / "launch" / "slurm" / "run.sh").read_text()
    assert f"PREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE}\n" in run_sh


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_default_signals_are_usr1_and_term(signum):
    with PreemptionFlag() as flag:
        os.kill(os.getpid(), signum)
        assert flag.received == signum
