"""A quiet, honest console: the start-up chatter of DeepSpeed and torch is hidden unless `logging.verbose`; the run
says which device and backend it uses and one line per phase."""

from __future__ import annotations

import logging
import os
import re

import torch

from pretrain.cluster.distributed import detect_env
from pretrain.config import PretrainConfig
from pretrain.telemetry.console import describe_env, quiet_deepspeed_logger, quiet_libraries, start_up_prints
from tests.helpers_runs import build_digits, failure, run, write_config

NOISE = ("Setting accelerator to CPU", "No CUDA runtime is found", "CPU Virtual Memory", "MA ", "built successfully",
         "all_gather_into_tensor", "untested optimizer")


def test_start_up_prints_are_swallowed_unless_verbose(capsys):
    with start_up_prints(verbose=False):
        print("MA 0.78 GB")
    with start_up_prints(verbose=True):
        print("shown")
    assert capsys.readouterr().out == "shown\n"


def test_the_accelerator_is_named_before_deepspeed_guesses(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    quiet_libraries(verbose=False)
    assert os.environ["DS_ACCELERATOR"] == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    quiet_libraries(verbose=False)
    assert os.environ["DS_ACCELERATOR"] == "xpu"  # the user's choice stays


def test_deepspeeds_untested_optimizer_warning_is_dropped_unless_verbose():
    logger, seen = logging.getLogger("DeepSpeed"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage()[:20])
    logger.addHandler(handler)
    try:
        quiet_deepspeed_logger(verbose=False)
        logger.warning("**** You are using ZeRO with an untested optimizer, proceed with caution *****")
        logger.warning("a real warning")
        quiet_deepspeed_logger(verbose=True)
        logger.warning("**** You are using ZeRO with an untested optimizer, proceed with caution *****")
    finally:
        logger.removeHandler(handler)
        quiet_deepspeed_logger(verbose=False)
    assert seen == ["a real warning", "**** You are using Z"]


def test_one_line_names_ranks_device_and_backend():
    env = detect_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, cuda=False)
    assert describe_env(env, PretrainConfig()) == (
        f"2 ranks on the CPU (gloo backend, {env.launcher} launcher), bf16, ZeRO stage 1: starting the process group")


def test_a_run_prints_its_phases_and_none_of_the_chatter(tmp_path):
    data = build_digits(tmp_path / "digits")
    cfg = write_config(tmp_path / "c.yaml", "configs/demo.yaml", {
        "data.train": str(data), "train.steps": 2, "logging.every_steps": 1, "schedule.warmup_steps": 1,
        "logging.image_every_steps": 0, "data.workers": 1, "checkpoint.every_steps": 100})
    proc = run("launch/pretrain.py", 2, "--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, failure(proc)
    out = proc.stdout + proc.stderr
    launcher = [line for line in out.splitlines() if re.match(r"^\[\d{4}-\d\d-\d\d .*\] \[(INFO|WARNING)\] "
                                                                r"\[(runner|launch)\.py", line)]
    ours = "\n".join(line for line in out.splitlines() if line not in launcher)  # the tests' launcher is not quieted
    assert [noise for noise in NOISE if noise in ours] == []
    phases = re.findall(r"INFO pretrain\.run: (.*)", ours)
    assert phases[:4] == ["2 ranks on the CPU (gloo backend, deepspeed launcher), bf16, ZeRO stage 1: starting the "
                          "process group", f"opening the training data {data}", "building mixer_demo at 32 px",
                          "building the DeepSpeed engine"]
