"""The README's first command: the whole pipeline on the bundled digits, two CPU ranks, a few minutes.

1. data_prep builds train/val WebDataset shards from scikit-learn's real handwritten digits (skipped if present);
2. `deepspeed --num_accelerators 2 launch/pretrain.py --config configs/demo.yaml` pretrains mixer_demo at 32 px;
3. `deepspeed ... launch/finetune.py --config configs/finetune/demo.yaml` fine-tunes it at 64 px (block-diagonal
   token-mixing expansion), evaluates exactly and runs the few-shot linear evaluation;
4. prints top-1, few-shot accuracy and where the TensorBoard logs are.
Each stage resumes (`--resume auto`), so running the demo again finishes at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def build_digits(data: Path) -> None:
    for split in ("train", "val"):
        if not (data / split / "manifest.json").is_file():
            sh([sys.executable, "-m", "data_prep", "build", "--layout", "digits", "--source", "digits", "--split",
                split, "--out", str(data / split), "--shard-max-samples", "300", "--overwrite"])


def distributed(script: str, nproc: int, *args: str) -> list[str]:
    """The users' launch command: the deepspeed launcher with `nproc` CPU ranks (gloo), or plain python for one."""
    if nproc == 1:
        return [sys.executable, script, *args]
    return [str(BIN / "deepspeed"), "--num_accelerators", str(nproc), "--master_port", "29531", script, *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (default 2)")
    args = parser.parse_args(argv)
    data = ROOT / "data" / "digits"
    build_digits(data)
    sh(distributed("launch/pretrain.py", args.ranks, "--config", "configs/demo.yaml", "--run-dir", "runs/demo",
                   "--resume", "auto"))
    sh(distributed("launch/finetune.py", args.ranks, "--config", "configs/finetune/demo.yaml", "--run-dir",
                   "runs/demo-finetune", "--resume", "auto"))
    metrics = json.loads((ROOT / "runs" / "demo-finetune" / "metrics.json").read_text())
    print(f"\nfine-tuned at 64 px: top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on "
          f"{metrics['num_samples']} validation digits")
    for shots, res in metrics.get("fewshot", {}).items():
        print(f"few-shot linear evaluation, {shots}: {res['mean']:.2%} (mean over seeds)")
    print("pretrained weights: runs/demo/final.safetensors")
    print("watch: tensorboard --logdir runs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
