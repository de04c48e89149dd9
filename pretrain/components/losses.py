"""Classification losses, chosen by name, always computed in float32.

- "softmax_xent": softmax cross-entropy, mean over the batch (timm/DeiT recipes).
- "sigmoid_xent": per-class binary cross-entropy summed over classes, mean over the batch (big_vision's
  `utils.sigmoid_xent`, used by its MLP-Mixer ImageNet recipe `configs/mlp_mixer_i1k.py`).

Targets are either int class indices (N,) or soft targets (N, K), e.g. from mixup/cutmix with label smoothing
already folded in; soft targets are used as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("softmax_xent", "sigmoid_xent")


def smoothed_one_hot(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """float32 (N, K) targets of int labels as big_vision smooths them (`utils.weighted_softmax_xent`):
    1 - label_smoothing on the label, label_smoothing / (K - 1) on every other class (rows sum to 1)."""
    off = label_smoothing / (num_classes - 1) if num_classes > 1 else 0.0
    on = 1.0 - label_smoothing
    return F.one_hot(target, num_classes).float() * (on - off) + off


def classification_loss(
    kind: str, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean loss of (N, K) logits against int (N,) or soft (N, K) targets, in float32 whatever the logits'
    dtype. `label_smoothing` applies to int targets only: for softmax_xent as F.cross_entropy does it, for
    sigmoid_xent as big_vision does it (see smoothed_one_hot)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}, expected one of {', '.join(LOSSES)}")
    logits = logits.float()
    if kind == "softmax_xent":
        if target.ndim == 2:
            return torch.sum(-target.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if target.ndim == 1:
        target = smoothed_one_hot(target, logits.shape[-1], label_smoothing)
    nll = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    return nll.sum(dim=-1).mean()
