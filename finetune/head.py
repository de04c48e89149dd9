"""The classifier head in fine-tuning: a fresh, zero-initialised linear head, and a checkpoint's head dropped
when its class count is not the model's.

The official MLP-Mixer / ViT fine-tuning code starts from a zero head, so the fine-tuned model's
first logits are all zero and the first gradient steps only move the head. We get the new head from
the model's own ``reset_classifier`` (timm's convention, also implemented by our Mixer), which keeps
the pooling and the pre-logit features untouched, then zero its weight and bias.

The classifier's state-dict entries are found from the model itself (the module ``classifier`` returns), so
they are ``head.*`` for the Mixer and ViT/DeiT/ConViT and ``fc.*`` for ResNet.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from finetune.errors import InitError
from pretrain.models.timm_models import classifier
from pretrain.models.weights import without_head


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of the model's classifier(s), e.g. ``('head.',)`` or ``('fc.',)``."""
    heads = classifier(model)
    heads = heads if isinstance(heads, tuple) else (heads,)
    names = {id(module): name for name, module in model.named_modules()}
    return tuple(f"{names[id(head)]}." for head in heads)


def classifier_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's classifier(s), e.g. ``['head.weight', 'head.bias']`` or ``['fc.weight',
    'fc.bias']``; empty when the head is an ``nn.Identity``."""
    prefixes = classifier_prefixes(model)
    return [key for key in model.state_dict() if key.startswith(prefixes)]


def _classes(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> int:
    return next((state[p + "weight"].shape[0] for p in prefixes if p + "weight" in state), 0)


def drop_mismatched_head(
    model: nn.Module, state: Mapping[str, torch.Tensor], what: str, drop_head: bool
) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """``state`` without its classifier when its class count is not ``model``'s, and the model's classifier keys
    that ``state`` then lacks (None when the head is kept). Without ``drop_head`` another class count is a
    one-line InitError. Zero the model's head (``zero_head``) once the rest is loaded."""
    prefixes = classifier_prefixes(model)
    ckpt_classes, model_classes = _classes(state, prefixes), _classes(model.state_dict(), prefixes)
    if ckpt_classes == model_classes:
        return dict(state), None
    if not drop_head:
        raise InitError(
            f"{what} has a {ckpt_classes}-class head but the model has {model_classes} classes; "
            "use drop_head=True to start from a zero head"
        )
    return without_head(state, prefixes), classifier_keys(model)


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
