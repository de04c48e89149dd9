"""Running the entry points as subprocesses on this machine, the way users launch them (the demo and the studies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DIGITS = ROOT / "data" / "digits"


def sh(cmd: list[str]) -> None:
    """Run `cmd` from the repository root (printed first); a failure raises CalledProcessError."""
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR") or accelerator()}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def accelerator() -> str:
    """DeepSpeed's accelerator, named for its launcher (which otherwise warns that it found no GPU on a CPU)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_digits(data: Path = DIGITS) -> None:
    """The bundled demo dataset: train/val shards of scikit-learn's real handwritten digits (kept if present)."""
    for split in ("train", "val"):
        if not (data / split / "manifest.json").is_file():
            sh([sys.executable, "-m", "data_prep", "build", "--layout", "digits", "--source", "digits", "--split",
                split, "--out", str(data / split), "--shard-max-samples", "300", "--overwrite"])


def distributed(script: str, nproc: int, *args: str) -> list[str]:
    """The users' launch command: the deepspeed launcher with `nproc` CPU ranks (gloo), or plain python for one."""
    if nproc == 1:
        return [sys.executable, script, *args]
    return [str(BIN / "deepspeed"), "--log_level", "error", "--num_accelerators", str(nproc), "--master_port",
            "29531", script, *args]
