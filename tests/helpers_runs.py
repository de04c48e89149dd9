"""Launching real training runs from tests, the way users launch them, and reading back what they wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from pretrain.cluster.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def build_digits(out: Path, split: str = "train", shard_max_samples: int = 300) -> Path:
    """Digits shards made by the data_prep CLI (the demo's data)."""
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "build", "--layout", "digits", "--source", "digits",
                        "--split", split, "--out", str(out), "--shard-max-samples", str(shard_max_samples)],
                       cwd=ROOT, check=True, capture_output=True)
    return out


def write_config(path: Path, base: str, overrides: dict) -> Path:
    """A copy of configs/<base> with dotted `overrides` applied."""
    cfg = yaml.safe_load((ROOT / base).read_text())
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def command(script: str, nproc: int, *args: str) -> list[str]:
    """`deepspeed --num_accelerators N script ...` for N > 1, plain python for one process."""
    if nproc == 1:
        return [sys.executable, script, *args]
    return [str(BIN / "deepspeed"), "--num_accelerators", str(nproc), "--master_port", str(free_port()), script,
            *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}


def run(script: str, nproc: int, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """Run to completion; the output is kept for the assertion messages."""
    return subprocess.run(command(script, nproc, *args), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def start(script: str, nproc: int, *args: str) -> subprocess.Popen:
    """Start in a new process group (so a test can kill -9 the launcher and every rank at once)."""
    return subprocess.Popen(command(script, nproc, *args), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def image_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return acc.Tags()["images"]


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "final.safetensors")


def failure(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
