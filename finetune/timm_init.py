"""Loading a fine-tuning init state dict into a timm model (any backbone other than our Mixer).

The surgery is timm's own for these models: the classifier is dropped when its class count differs from the
model's (``finetune.head.drop_mismatched_head``; the model's head is then zeroed, as for the Mixer), absolute
position embeddings are resampled (``timm.layers.resample_abs_pos_embed``, bicubic) when the fine-tune resolution
gives another patch grid, and every other entry must fit exactly. Convolutional models (ResNet) have no size-dependent
weights and load unchanged at any resolution.

The prefix (class) tokens of the position embedding are counted as its length minus the model's patch grid: ViT/DeiT
store one for the class token, ConViT stores none (its class token joins after the local blocks), whatever
``num_prefix_tokens`` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from finetune.errors import InitError
from finetune.fit import check_fits
from finetune.head import drop_mismatched_head, zero_head

Grid = tuple[int, int]
POS_EMBED = "pos_embed"


@dataclass(frozen=True)
class BackboneInitReport:
    """What ``load_init`` did to a timm model: position-embedding grids before and after (None when the model has
    none or they agree), head dropped or not."""

    source: str
    pos_embed_grids: tuple[Grid, Grid] | None
    head_dropped: bool


def resample_pos_embed(
    state: dict[str, torch.Tensor], model: nn.Module, img_size_pretrained: int | Grid | None, what: str
) -> tuple[Grid, Grid] | None:
    """Resample ``state['pos_embed']`` in place to the model's patch grid; the grids, or None if nothing changed."""
    model_pos = getattr(model, POS_EMBED, None)
    if POS_EMBED not in state or not isinstance(model_pos, torch.Tensor):
        return None
    pos = state[POS_EMBED]
    if pos.shape == model_pos.shape or pos.shape[-1] != model_pos.shape[-1] or not hasattr(model, "patch_embed"):
        return None  # the same, or a mismatch the strict check reports
    new_grid = tuple(model.patch_embed.grid_size)
    prefix = model_pos.shape[1] - new_grid[0] * new_grid[1]
    tokens = pos.shape[1] - prefix
    if img_size_pretrained is None:
        side = math.isqrt(max(tokens, 0))
        old_grid = (side, side)
    else:
        height, width = (img_size_pretrained,) * 2 if isinstance(img_size_pretrained, int) else img_size_pretrained
        patch = tuple(model.patch_embed.patch_size)
        old_grid = (height // patch[0], width // patch[1])
    if tokens <= 0 or old_grid[0] * old_grid[1] != tokens:
        raise InitError(f"{what}: its {POS_EMBED} holds {pos.shape[1]} positions, which after {prefix} prefix "
                        f"token(s) do not form a {'square' if img_size_pretrained is None else 'matching'} patch "
                        "grid; give the pretrained image size")
    state[POS_EMBED] = resample_abs_pos_embed(pos, new_size=list(new_grid), old_size=list(old_grid),
                                              num_prefix_tokens=prefix)
    return old_grid, new_grid


def load_timm_init(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    what: str,
    source: str,
    *,
    img_size_pretrained: int | Grid | None = None,
    drop_head: bool = True,
) -> BackboneInitReport:
    """Load ``state`` into timm model ``model``: resample its position embedding, drop a head of another class
    count (``drop_head``; an error otherwise) and zero the model's, load everything else strictly."""
    state, missing_head = drop_mismatched_head(model, state, what, drop_head)
    grids = resample_pos_embed(state, model, img_size_pretrained, what)
    check_fits(state, model.state_dict(), what, ignore_missing=missing_head or ())
    model.load_state_dict(state, strict=False)
    if missing_head is not None:
        zero_head(model)
    return BackboneInitReport(source, grids, head_dropped=missing_head is not None)

