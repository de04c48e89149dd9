"""The evaluation forward pass: pre-logit features in the model's dtype, logits in float32, over a loader in
lockstep with the other ranks (`forward_batches`, the one pass both evaluators make).

bf16 logits near 10 are rounded to 1/16, which turns close classes into ties broken by index; the head is applied
in float32 to the features instead. The model's own parameters (ViT's position embedding, class token) and its
head are gathered once for a whole pass under ZeRO-3, where calling `forward_features` and the head directly
would otherwise meet them partitioned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.evaluators.lockstep import gathered, is_zero3, lockstep
from pretrain.models.timm_models import classifier


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, the root's own and the head's parameters gathered; the mode is put back after."""
    was_training = model.training
    heads = classifier(model)
    heads = heads if isinstance(heads, tuple) else (heads,)
    params = list(model.parameters(recurse=False)) + [p for head in heads for p in head.parameters()]
    model.eval()
    try:
        with torch.no_grad(), gathered(params, is_zero3(model)):
            yield
    finally:
        model.train(was_training)


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the head sees, in float32."""
    return model.forward_head(model.forward_features(x), pre_logits=True).float()


def logits_fp32(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class scores with the (linear) head applied in float32; other heads (two of a distilled model, say) run as the
    model runs them."""
    head = classifier(model)
    if not isinstance(head, nn.Linear):
        return model(x).float()
    bias = None if head.bias is None else head.bias.float()
    return F.linear(pre_logits(model, x), head.weight.float(), bias)


def forward_batches(model: nn.Module, loader: Iterable[dict[str, Any]],
                    preprocess: Callable[[torch.Tensor], torch.Tensor],
                    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor], device: torch.device,
                    img_size: int) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """`(batch, forward(model, images))` for each of this rank's batches, in `evaluation_mode`. Once this rank is done
    and another still has a batch, it runs `forward` on a stand-in image and drops the result (see lockstep.py), so
    ZeRO-3's per-layer collectives stay matched and every sample is still counted once."""
    with evaluation_mode(model):
        for batch in lockstep(loader, device):
            if batch is None:
                forward(model, preprocess(torch.zeros(1, 3, img_size, img_size, dtype=torch.uint8, device=device)))
                continue
            yield batch, forward(model, preprocess(batch["image"].to(device, non_blocking=True)))
