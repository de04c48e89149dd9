"""Classifier head replacement for fine-tuning: a fresh, zero-initialised linear head.

The official MLP-Mixer / ViT fine-tuning code starts from a zero head, so the fine-tuned model's
first logits are all zero and the first gradient steps only move the head. We get the new head from
the model's own ``reset_classifier`` (timm's convention, also implemented by our Mixer), which keeps
the pooling and the pre-logit features untouched, then zero its weight and bias.
"""

from __future__ import annotations

import torch
from torch import nn


def classifier(model: nn.Module) -> nn.Module:
    """The model's classifier module: ``get_classifier()`` where the model has it (timm), else ``head``."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return model.head


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give ``model`` a zero-initialised linear head with ``num_classes`` outputs, in place.

    Works for our Mixer and for any timm model (both implement ``reset_classifier(num_classes)``).
    The new head is placed on the device and dtype of the model's first parameter. When the new head is
    an ``nn.Linear`` its weight and bias are zeroed; ``num_classes=0`` gives timm's ``nn.Identity`` head
    (the model then returns pre-logits) and nothing is zeroed. The head is a new module: build the
    optimizer afterwards.
    """
    if not hasattr(model, "reset_classifier"):
        raise TypeError(
            f"{type(model).__name__} has no reset_classifier(num_classes); cannot replace its head"
        )
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    reference = next(model.parameters())
    model.reset_classifier(num_classes)
    classifier(model).to(device=reference.device, dtype=reference.dtype)
    zero_head(model)


def zero_head(model: nn.Module) -> None:
    """Zero the weight and bias of the model's classifier in place, when it is an ``nn.Linear``."""
    head = classifier(model)
    if isinstance(head, nn.Linear):
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
