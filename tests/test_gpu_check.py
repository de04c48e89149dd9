"""benchmarks/gpu_check.py: its dry run (CPU, tiny settings) runs every step and tabulates it, so the command
prepared for a short GPU window cannot rot; a step that fails or overruns its budget is a FAILED row and the
next step still runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import COLUMNS, Check

ROOT = Path(__file__).resolve().parents[1]
HEADERS = [header for _, header in COLUMNS]


def table(markdown: str) -> list[dict[str, str]]:
    """The rows of the results table, as {header: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == HEADERS
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        assert len(cells) == len(HEADERS), line
        rows.append(dict(zip(HEADERS, cells, strict=True)))
    return rows


def number(text: str) -> float:
    return float(text.rstrip("%"))


@pytest.mark.timeout(900)
def test_dry_run_has_a_row_per_step_none_failed_and_numbers_where_expected(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(out), "--dry-run", "--work-dir",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=880)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]
    rows = table((out / "results.md").read_text())
    assert not [r for r in rows if r["status"] != "ok"], [r for r in rows if r["status"] != "ok"]
    assert {r["step"] for r in rows} == {"0", "1", "2", "3", "4"}

    def where(step: str, text: str) -> list[dict[str, str]]:
        found = [r for r in rows if r["step"] == step and text in r["check"]]
        assert found, f"no step-{step} row with {text!r}"
        return found

    assert "torch" in where("0", "environment")[0]["notes"] and "DeepSpeed" in rows[0]["notes"]
    where("0", "digits shards"), where("0", "photo JPEG")
    # 1: pretrain and resume have a throughput, fine-tune and evaluation an accuracy
    for text in ("demo pretrain", "demo resume"):
        assert number(where("1", text)[0]["img/s"]) > 0
    assert "resumed from step 4" in where("1", "demo resume")[0]["notes"]
    for text in ("demo fine-tune", "demo evaluation"):
        assert 0 <= number(where("1", text)[0]["top-1"]) <= 100
    # 2: the measured peak, then ours and timm per model, eager and compiled; ours has the ratio
    assert number(where("2", "matmul peak")[0]["TFLOP/s"]) > 0
    for how in ("bf16, eager:", "bf16, torch.compile"):
        ours = [r for r in where("2", how) if "ours" in r["check"]]
        theirs = [r for r in where("2", how) if "timm.create_model" in r["check"]]
        assert ours and len(ours) == len(theirs)
        for r in ours + theirs:
            assert number(r["img/s"]) > 0 and number(r["TFLOP/s"]) >= 0 and number(r["MFU"]) >= 0
        assert all(number(r["ours/timm"]) > 0 for r in ours)
    assert len([r for r in where("2", "bf16, eager:") if "ours" in r["check"]]) == 2  # the B/16 and L/16 roles
    # 3: four trainer configurations with img/s, MFU, data wait and memory
    trainer = where("3", "trainer")
    assert {(("ZeRO-1" in r["check"]), "checkpointing on" in r["check"]) for r in trainer} == {
        (True, False), (True, True), (False, False), (False, True)}
    for r in trainer:
        assert number(r["img/s"]) > 0 and number(r["MFU"]) >= 0 and 0 <= number(r["data wait"]) <= 100
        assert number(r["peak mem GiB"]) > 0
    # 4: the loader with 1 and N workers, and the cores a GPU needs at each rate measured above
    loaders = where("4", "loader: ")
    assert len(loaders) == 2 and all(number(r["img/s"]) > 0 and number(r["img/s per core"]) > 0 for r in loaders)
    cores = where("4", "loader cores one GPU needs")
    assert len(cores) == 4 and all(number(r["cores/GPU"]) >= 0 for r in cores)  # eager x2, compiled, trainer


def test_a_failing_or_overrunning_step_is_a_failed_row_and_the_next_step_runs(tmp_path):
    check = Check(tmp_path / "out", tmp_path / "work", time_limit=120, echo=lambda line: None)
    fails = [sys.executable, "-c", "raise RuntimeError('boom')"]
    assert not check.entry_point("1", "boom", fails, 60, "a step that raises", parse=lambda o: [])
    sleeps = [sys.executable, "-c", "import time; time.sleep(60)"]
    assert not check.entry_point("1", "sleep", sleeps, 2, "a step over its budget", parse=lambda o: [])
    rows, _ = check.worker("2", "bad-spec", "throughput", {}, 60, "a worker given a bad spec")
    fine = [sys.executable, "-c", "print('fine')"]
    ok_row = lambda o: [{"step": "4", "check": "fine", "status": "ok", "notes": o.output.strip()}]
    assert check.entry_point("4", "fine", fine, 60, "a step after them", parse=ok_row)
    check.close()
    status = [(r["check"], r["status"]) for r in check.rows]
    assert status == [("a step that raises", "FAILED"), ("a step over its budget", "FAILED"),
                      ("a worker given a bad spec", "FAILED"), ("fine", "ok")]
    notes = [r["notes"] for r in check.rows]
    assert notes[0] == "exit 1: RuntimeError: boom"
    assert notes[1] == "timed out after 2 s (its budget)"
    assert notes[2].startswith("exit 1: KeyError: ")
    assert notes[3] == "fine" and check.rows[3]["s"] > 0
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert log.count("Traceback (most recent call last)") == 2  # the raise and the worker's, in the log
