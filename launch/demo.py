"""The README's first command: the whole pipeline on the bundled digits, two CPU ranks, a few minutes.

1. data_prep builds train/val WebDataset shards from scikit-learn's real handwritten digits (skipped if present);
2. `deepspeed --num_accelerators 2 launch/pretrain.py --config configs/demo.yaml` pretrains mixer_demo at 32 px,
   evaluating validation accuracy and 5-shot linear accuracy every 100 steps;
3. `deepspeed ... launch/finetune.py --config configs/finetune/demo.yaml` fine-tunes it at 64 px (block-diagonal
   token-mixing expansion), evaluates exactly and runs the few-shot linear evaluation;
4. prints each figure with the weights and resolution it is of, the weights' and metrics' paths and the
   TensorBoard command.
Each stage resumes (`--resume auto`), so running the demo again finishes at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python launch/demo.py` puts launch/ on sys.path

from launch.local import BIN, DIGITS, ROOT, build_digits, distributed, sh

FINAL, METRICS = "final.safetensors", "metrics.json"  # pretrain.components.checkpoint's and pretrain.run's names

# The pretraining's evaluators (the paper's Figure 2/4 curves, at demo scale): validation accuracy and 5-shot, named
# as the fine-tune stage names its own (`val`, `fewshot`) so both stages' curves share TensorBoard's charts.
PRETRAIN_EVALS = ("evals.val.type=classification", f"evals.val.data={DIGITS / 'val'}", "evals.val.every_steps=100",
                  "evals.fewshot.type=fewshot", f"evals.fewshot.train={DIGITS / 'train'}",
                  f"evals.fewshot.val={DIGITS / 'val'}", "evals.fewshot.shots=[1,5]", "evals.fewshot.every_steps=100")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks (default 2)")
    args = parser.parse_args(argv)
    print(f"building the digits shards in {DIGITS} (kept if present)", flush=True)
    build_digits(DIGITS)
    print(f"pretraining mixer_demo on {args.ranks} ranks (start-up: ~10-30 s of imports)", flush=True)
    sh(distributed("launch/pretrain.py", args.ranks, "--config", "configs/demo.yaml", "--run-dir", "runs/demo",
                   "--resume", "auto", "--set", *PRETRAIN_EVALS))
    print(f"fine-tuning it at twice the resolution on {args.ranks} ranks", flush=True)
    sh(distributed("launch/finetune.py", args.ranks, "--config", "configs/finetune/demo.yaml", "--run-dir",
                   "runs/demo-finetune", "--resume", "auto"))
    print("\n" + "\n".join(summary(Path("runs/demo"), Path("runs/demo-finetune"))))
    return 0


def summary(pretrain: Path, finetune: Path) -> list[str]:
    """What the demo measured, each figure with the weights and resolution it is of, and where everything is."""
    pre_px, ft_px = _img_size(pretrain), _img_size(finetune)
    pre_weights, ft_weights = pretrain / FINAL, finetune / FINAL
    history = json.loads((ROOT / pretrain / METRICS).read_text())["history"]
    curve = ", ".join(f"step {r['step']}: {r['fewshot']['5shot']['mean']:.1%}" for r in history
                      if r["name"] == "fewshot")
    metrics = json.loads((ROOT / finetune / METRICS).read_text())
    lines = [f"pretraining ({pretrain}, {pre_px} px): 5-shot linear accuracy of the weights being trained, "
             f"on the validation digits at {pre_px} px: {curve}",
             f"fine-tuned weights ({ft_weights}) at {ft_px} px: top-1 {metrics['top1']:.2%}, "
             f"top-5 {metrics['top5']:.2%} on {metrics['num_samples']} validation digits"]
    which = {"fewshot_init": f"the pretrained weights ({pre_weights}) expanded to {ft_px} px, before fine-tuning",
             "fewshot": f"the fine-tuned weights ({ft_weights}) at {ft_px} px"}
    for name, weights in which.items():
        results = metrics["evals"].get(name, {}).get("fewshot", {})
        if results:
            shots = ", ".join(f"{n} {r['mean']:.2%}" for n, r in results.items())
            lines.append(f"few-shot linear accuracy of {weights} (mean over seeds): {shots}")
    lines += [f"metrics: {pretrain / METRICS}, {finetune / METRICS}",
              f"TensorBoard: {os.path.relpath(BIN / 'tensorboard', ROOT)} --logdir runs/"]
    return lines


def _img_size(run: Path) -> int:
    """The image size of a run, as its resolved config.yaml records it."""
    return yaml.safe_load((ROOT / run / "config.yaml").read_text())["model"]["img_size"]

if __name__ == "__main__":
    sys.exit(main())
