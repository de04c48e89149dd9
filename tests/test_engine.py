"""The engine's step, in a real one-process DeepSpeed engine: an update with a non-finite gradient (an infinite
gradient with a finite loss) is a bad step in every ZeRO stage, the weights do not move, and the schedule stays on
the step count; a ZeRO-0 step skipped over a non-finite batch leaves Adam's moments and step count as ZeRO-1 does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pretrain.components.schedule import lr_factor
from tests.helpers_runs import ROOT, env


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (0, "bf16"), (1, "bf16"), (2, "bf16"), (3, "bf16"),
                                              (1, "fp32")])
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


def test_a_zero0_step_over_a_non_finite_batch_is_skipped_as_under_zero1(tmp_path):
    results = {}
    for stage in (0, 1):
        out = tmp_path / f"zero{stage}.pt"
        proc = subprocess.run([sys.executable, "tests/helpers_skip_worker.py", str(stage), str(out)], cwd=ROOT,
                              env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[stage] = torch.load(out)
    zero0, zero1 = results[0], results[1]
    assert zero0["bad"] == zero1["bad"] == [False, False, True, False]
    assert zero0["schedule"] == zero1["schedule"] == 4
    assert set(zero0["steps"]) == set(zero1["steps"]) == {3}  # the bad step left Adam's step count alone
    for name, weight in zero1["weights"].items():
        assert torch.equal(zero0["weights"][name], weight), name
        for key, moment in zero1["moments"][name].items():
            assert torch.equal(zero0["moments"][name][key], moment), (name, key)
