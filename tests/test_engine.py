"""The engine's step, in a real one-process DeepSpeed engine: an update DeepSpeed skips (an infinite gradient with a
finite loss) is a bad step, the weights do not move, and the schedule stays on the step count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretrain.schedule import lr_factor
from tests.helpers_runs import ROOT, env


@pytest.mark.parametrize("stage, precision", [(1, "bf16"), (2, "bf16"), (3, "bf16"), (1, "fp32")])
def test_an_update_deepspeed_skips_is_a_bad_step_and_the_schedule_stays_on_the_step_count(stage, precision):
    proc = subprocess.run([sys.executable, "tests/helpers_engine_worker.py", str(stage), precision, "2,3"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [s["bad"] for s in steps] == [False, False, True, True, False, False]
    assert [s["moved"] for s in steps] == [True, True, False, False, True, True]
    assert all(s["loss_finite"] for s in steps)  # only the gradient was infinite
    assert [s["schedule"] for s in steps] == [1, 2, 3, 4, 5, 6]  # put back on the step count after each skip
    from pretrain.config import ScheduleConfig

    schedule = ScheduleConfig(name="cosine", warmup_steps=2)
    assert [s["lr"] for s in steps] == pytest.approx([0.01 * lr_factor(k, 6, schedule) for k in range(6)])
