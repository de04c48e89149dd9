"""Smoke test of the model benchmark: it runs end to end on the demo model and refuses bad arguments."""

import torch

from benchmarks.bench_model import main


def test_benchmark_reports_both_models_and_their_ratio(capsys):
    assert main(["--model", "mixer_demo", "--batch", "2", "--rounds", "2", "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    assert lines[1].startswith("mixer_demo batch 2 fp32 on cpu: 2 rounds x 1 steps, forward 0.08 GFLOP/img")
    assert [line.split()[0] for line in lines[2:]] == ["ours", "timm", "ratio"]
    assert lines[2].count("img/s") == 1 and "% of peak)  rounds: " in lines[2]


def test_benchmark_bad_arguments_exit_2_with_one_line(capsys):
    assert main(["--model", "mixer_x"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("bench_model: unknown model 'mixer_x'; known models: mixer_b16,")
        and err.count("\n") == 1
    )
    assert main(["--batch", "0"]) == 2
    assert capsys.readouterr().err == "bench_model: --batch, --steps and --rounds must be positive\n"
