"""Few-shot linear evaluation of frozen pre-logit features (the MLP-Mixer paper's n-shot metric).

Follows big_vision's ``fewshot_lsr`` evaluator. For each seed, every class's training examples are
shuffled once with ``numpy.random.default_rng(seed)`` and the first ``n`` of each class form the
n-shot set (so the 1-shot set is inside the 5-shot set of the same seed). On that set we fit, in
closed form and float64, an L2-regularised least-squares map onto one-vs-all targets (+1 for the
class, -1 otherwise). The features are whitened by the n-shot set's mean and standard deviation
(+1e-5), and a constant feature of 100 is appended as the bias, large so its weight is nearly
unregularised. Accuracy is the argmax prediction on the held-out set. Defaults match big_vision's
common config: 1/5/10/25 shots, 3 seeds, ``l2_reg = 2**10``.

A class with fewer training examples than a requested shot count is an error (big_vision silently
uses fewer): the metric would not mean what its name says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pretrain.evaluators.errors import EvalError

BIAS_FEATURE = 100.0
DEFAULT_L2_REG = 2.0**10
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)
PREDICT_CHUNK = 8192


class FewShotError(EvalError):
    """The few-shot problem cannot be set up as asked (too few examples per class, bad inputs)."""


def design_matrix(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Features whitened by ``mean`` and ``std`` with the constant bias column appended (float64)."""
    x = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.concatenate([x, np.full((len(x), 1), BIAS_FEATURE)], axis=1)


@dataclass(frozen=True)
class LinearProbe:
    """A fitted least-squares probe: whitening statistics and weights ``[D + 1, C]`` (last row: bias)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Regression outputs ``[N, C]`` (float64)."""
        return design_matrix(features, self.mean, self.std) @ self.weights

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class per row of ``features`` (processed in chunks to bound memory)."""
        chunks = range(0, len(features), PREDICT_CHUNK)
        return np.concatenate(
            [np.argmax(self.scores(features[i : i + PREDICT_CHUNK]), axis=1) for i in chunks]
        )


def fit_lsr(
    features: np.ndarray, labels: np.ndarray, num_classes: int, l2_reg: float = DEFAULT_L2_REG
) -> LinearProbe:
    """Closed-form ridge regression of {-1, +1} one-vs-all targets on whitened features plus a bias column.

    Solves ``(X^T X + l2 I) W = X^T Y`` when there are at least as many rows as columns, otherwise the
    equivalent dual ``W = X^T (X X^T + l2 I)^{-1} Y``.
    """
    x = np.asarray(features, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    design = design_matrix(x, mean, std)
    targets = 2.0 * np.eye(num_classes)[np.asarray(labels)] - 1.0
    rows, cols = design.shape
    if rows >= cols:
        weights = np.linalg.solve(design.T @ design + l2_reg * np.eye(cols), design.T @ targets)
    else:
        weights = design.T @ np.linalg.solve(design @ design.T + l2_reg * np.eye(rows), targets)
    return LinearProbe(mean, std, weights)


def fewshot_indices(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """Indices of the ``shots``-shot set for ``seed``: the first ``shots`` of each class's shuffle."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return np.concatenate([indices[:shots] for indices in per_class])


def check_counts(train_labels: np.ndarray, num_classes: int, shots: Sequence[int]) -> None:
    counts = np.bincount(train_labels, minlength=num_classes)
    poorest = int(np.argmin(counts))
    if counts[poorest] < max(shots):
        raise FewShotError(
            f"{max(shots)}-shot evaluation needs {max(shots)} training examples of every class, "
            f"but class {poorest} has {counts[poorest]}"
        )


def fewshot_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    l2_reg: float = DEFAULT_L2_REG,
    num_classes: int | None = None,
) -> dict[str, dict]:
    """Held-out accuracy of the least-squares probe per shot count, over ``seeds``.

    Returns ``{"5shot": {"mean": m, "std": s, "per_seed": [acc, ...]}, ...}`` in the order of ``shots``
    (``std`` is the population standard deviation over seeds). ``num_classes`` defaults to one more than
    the largest label seen.
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise FewShotError("features and labels must have the same number of rows")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    check_counts(train_labels, num_classes, shots)
    per_seed = {n: [] for n in shots}
    for seed in seeds:
        for n in shots:
            idx = fewshot_indices(train_labels, num_classes, n, seed)
            probe = fit_lsr(train_features[idx], train_labels[idx], num_classes, l2_reg)
            per_seed[n].append(float(np.mean(probe.predict(test_features) == test_labels)))
    return {
        f"{n}shot": {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_seed": accs}
        for n, accs in per_seed.items()
    }
