"""Timings of the fine-tune stage's CPU-side work at ImageNet scale.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_finetune``. Measures the
Appendix C token-mixing expansion of a Mixer-B/16 state dict (224 -> 448 px), the few-shot
least-squares evaluation with 1000 classes, and the exact metric accumulator over 50,000 logits.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from finetune.resolution import expand_token_mixing
from pretrain.evaluators.accuracy import EvalAccumulator
from pretrain.evaluators.fewshot_lsr import fewshot_accuracy


def timed(label: str, fn) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")


def mixer_b16_token_mixing(blocks: int = 12, tokens: int = 196, hidden: int = 384) -> dict[str, torch.Tensor]:
    state = {"stem.proj.weight": torch.randn(768, 3, 16, 16)}
    for i in range(blocks):
        prefix = f"blocks.{i}.mlp_tokens."
        state |= {
            prefix + "fc1.weight": torch.randn(hidden, tokens),
            prefix + "fc1.bias": torch.randn(hidden),
            prefix + "fc2.weight": torch.randn(tokens, hidden),
            prefix + "fc2.bias": torch.randn(tokens),
        }
    return state


def main() -> None:
    torch.set_num_threads(2)
    state = mixer_b16_token_mixing()
    timed(
        "expand Mixer-B/16 token mixing 14x14 -> 28x28 (12 blocks, fp32)",
        lambda: expand_token_mixing(state, (14, 14), (28, 28)),
    )

    rng = np.random.default_rng(0)
    classes, dim = 1000, 768
    train_labels = np.repeat(np.arange(classes), 30)
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    train = centers[train_labels] + 2 * rng.normal(size=(len(train_labels), dim)).astype(np.float32)
    test_labels = rng.integers(0, classes, 50_000)
    test = centers[test_labels] + 2 * rng.normal(size=(len(test_labels), dim)).astype(np.float32)
    for shots in (1, 5, 10, 25):
        timed(
            f"few-shot {shots}-shot, 1000 classes, D=768, 50k test, 1 seed",
            lambda shots=shots: fewshot_accuracy(
                train, train_labels, test, test_labels, shots=(shots,), seeds=(0,)
            ),
        )

    logits = torch.randn(50_000, classes)
    labels = torch.randint(0, classes, (50_000,))
    keys = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(50_000)]
    real = {k: [int(labels[i])] for i, k in enumerate(keys)}

    def accumulate() -> None:
        acc = EvalAccumulator(classes, real)
        for start in range(0, 50_000, 500):
            acc.update(logits[start : start + 500], labels[start : start + 500], keys[start : start + 500])
        acc.result()

    timed("EvalAccumulator over 50k x 1000 logits with ReaL, batches of 500", accumulate)


if __name__ == "__main__":
    main()
