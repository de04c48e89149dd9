"""Smoke test of the evaluation-cost benchmark: one tiny round end to end (its own digits shards, the demo config, both
evaluators, a small projection), and bad arguments refused with one line."""

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_eval import main

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_measures_both_evaluators_and_computes_the_projection():
    args = ["--steps", "1", "--rounds", "1", "--shots", "1", "--every", "100", "--set", "model.img_size=16",
            "--project-val", "200", "--project-classes", "10", "--project-per-class", "5", "--project-every", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MASTER_PORT", None)  # a single process picks a free port
    proc = subprocess.run([sys.executable, "benchmarks/bench_eval.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line.strip() for line in proc.stdout.splitlines()]

    def line(prefix: str) -> str:
        found = [x for x in lines if x.startswith(prefix)]
        assert len(found) == 1, (prefix, proc.stdout[-3000:])
        return found[0]

    line("device: ")
    line("measured: configs/demo.yaml: mixer_demo at 16 px, global batch 64 (micro 32 x 2), bf16, ZeRO 1, 1 process")
    assert "TFLOP/s measured" in line("matmul peak bf16: ")
    assert "img/s  MFU" in line("training step  ")
    line("val: classification, 359 images: ")
    line("fs: few-shot 1-shot x 3 seeds, ")  # the images: the shot sets forwarded + val
    line("every 100 steps: ")
    line("ratio evaluation/training at every 100 steps: ")
    line("projected: configs/mixer_l16.yaml: mixer_l16 at 224 px")
    line("assumptions: 64 x H100-SXM at 989.4 TFLOP/s bf16 (mfu.py table), MFU 50%")
    # At equal MFU a FLOP-only share is val / (val + 3 x every x batch): 200 / (200 + 3 x 10 x 4096) = 0.163 %.
    row = next(x for x in lines if x.startswith("|") and x.split("|")[1].strip() == "10")
    assert [c.strip() for c in row.split("|")[3:5]] == ["0.162%", "0.203%"]
    line("ratio evaluation/training projected at every 10 steps: classification 0.00163, few-shot 0.00203 (+ solve ")


def test_benchmark_bad_arguments_exit_2_with_one_line(capsys):
    assert main(["--steps", "0"]) == 2
    assert capsys.readouterr().err == (
        "bench_eval: --steps, --rounds, --every, --shots and the --project-* counts must be positive\n")
    assert main(["--assume-device", "B200"]) == 2
    assert capsys.readouterr().err.startswith("bench_eval: unknown --assume-device 'B200'; known: H100-SXM,")
    assert main(["--assume-mfu", "1.5"]) == 2
    assert capsys.readouterr().err == "bench_eval: --assume-mfu must be in (0, 1], got 1.5\n"
    assert main(["--set", "optim.lrr=1"]) == 2
    assert capsys.readouterr().err == "bench_eval: `optim.lrr`: unknown key; did you mean `optim.lr`?\n"
    assert main(["--assume-device", "V100"]) == 2  # the projection is checked before anything is measured
    assert capsys.readouterr().err == "bench_eval: V100 has no bf16 peak in pretrain/telemetry/mfu.py\n"
