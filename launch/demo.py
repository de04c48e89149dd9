"""The README's first command: the whole pipeline on the bundled digits, two CPU ranks, a few minutes.

1. data_prep builds train/val WebDataset shards from scikit-learn's real handwritten digits (skipped if present);
2. `deepspeed --num_accelerators 2 launch/pretrain.py --config configs/demo.yaml` pretrains mixer_demo at 32 px,
   evaluating validation accuracy and 5-shot linear accuracy every 100 steps;
3. `deepspeed ... launch/finetune.py --config configs/finetune/demo.yaml` fine-tunes it at 64 px (block-diagonal
   token-mixing expansion), evaluates exactly and runs the few-shot linear evaluation;
4. prints top-1, few-shot accuracy and where the TensorBoard logs are.
Each stage resumes (`--resume auto`), so running the demo again finishes at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python launch/demo.py` puts launch/ on sys.path

from launch.local import DIGITS, ROOT, build_digits, distributed, sh

# The pretraining's evaluators (the paper's Figure 2/4 curves, at demo scale): validation accuracy and 5-shot.
PRETRAIN_EVALS = ("evals.val.type=classification", f"evals.val.data={DIGITS / 'val'}", "evals.val.every_steps=100",
                  "evals.fs.type=fewshot", f"evals.fs.train={DIGITS / 'train'}", f"evals.fs.val={DIGITS / 'val'}",
                  "evals.fs.shots=[1,5]", "evals.fs.every_steps=100")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (default 2)")
    args = parser.parse_args(argv)
    build_digits(DIGITS)
    sh(distributed("launch/pretrain.py", args.ranks, "--config", "configs/demo.yaml", "--run-dir", "runs/demo",
                   "--resume", "auto", "--set", *PRETRAIN_EVALS))
    sh(distributed("launch/finetune.py", args.ranks, "--config", "configs/finetune/demo.yaml", "--run-dir",
                   "runs/demo-finetune", "--resume", "auto"))
    history = json.loads((ROOT / "runs" / "demo" / "metrics.json").read_text())["history"]
    curve = ", ".join(f"step {r['step']}: {r['fewshot']['5shot']['mean']:.1%}" for r in history if r["name"] == "fs")
    print(f"\npretraining, 5-shot linear accuracy on the validation digits: {curve}")
    metrics = json.loads((ROOT / "runs" / "demo-finetune" / "metrics.json").read_text())
    print(f"fine-tuned at 64 px: top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on "
          f"{metrics['num_samples']} validation digits")
    for name, weights in (("fewshot_init", "pretrained"), ("fewshot", "fine-tuned")):
        for shots, res in metrics["evals"].get(name, {}).get("fewshot", {}).items():
            print(f"few-shot linear evaluation of the {weights} weights, {shots}: {res['mean']:.2%} (mean over seeds)")
    print("pretrained weights: runs/demo/final.safetensors")
    print("watch: tensorboard --logdir runs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
