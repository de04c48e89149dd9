"""Loading a fine-tuning init checkpoint: into a Mixer (expand for resolution, drop the head, load) or, through
``finetune.timm_init``, into any timm model (resample the position embedding, drop the head, load).

``load_init`` composes the surgery around a pretrained state dict: it finds the pretrained token grid
from the token-mixing weight shapes, expands the token-mixing MLPs when the model is built at a larger
resolution (``finetune.resolution``), drops the head when its class count differs from the model's
(the model's head is then zeroed, as in the official fine-tuning code), and loads strictly otherwise.

``read_state_dict`` finds the weights of a run or checkpoint dir (``pretrain.components.checkpoint.resolve_weights``)
and reads every weights format through ``pretrain.models.read_weights`` (.safetensors, timm .pth, Flax .npz for
Mixers only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from finetune.errors import InitError
from finetune.fit import check_fits
from finetune.head import drop_mismatched_head, zero_head
from finetune.resolution import (
    TOKEN_MIXING_KEY,
    Grid,
    check_patch_size,
    expand_token_mixing,
    match_token_mixing_width,
    scale_factors,
    state_dict_grid,
)
from finetune.timm_init import BackboneInitReport, load_timm_init
from pretrain.components.checkpoint import CheckpointError, resolve_weights
from pretrain.models import WeightsError, is_mixer, read_weights
from pretrain.models.weights import STEM_WEIGHT

__all__ = ["BackboneInitReport", "InitError", "InitReport", "load_init", "read_state_dict"]


@dataclass(frozen=True)
class InitReport:
    """What ``load_init`` did: token grids before and after, expansion factors, head dropped or not."""

    source: str
    pretrained_grid: Grid
    grid: Grid
    factors: Grid
    head_dropped: bool


def read_state_dict(path: str | Path, mixer: bool = True) -> dict[str, torch.Tensor]:
    """A state dict on the CPU from a run or checkpoint dir (its fp32 weights) or a weights file of any format;
    ``mixer=False`` accepts any model's state dict (not .npz)."""
    try:
        return read_weights(resolve_weights(path) if Path(path).is_dir() else path, mixer=mixer)
    except (CheckpointError, WeightsError) as err:
        raise InitError(str(err)) from None


def load_init(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    img_size_pretrained: int | Grid | None = None,
    img_size: int | Grid | None = None,
    drop_head: bool = True,
) -> InitReport | BackboneInitReport:
    """Load pretrained weights (path or state dict) into ``model``: a Mixer's token mixing is expanded for its
    resolution; a timm model's position embedding is resampled (``finetune.timm_init``).

    Image sizes left as None are taken as square and read from the token counts (``img_size`` is a Mixer's only;
    a timm model knows its own). With ``drop_head`` the checkpoint's head is dropped when its class count differs
    from the model's and the model's head is zeroed; without it a different class count is an error. Call before
    wrapping the model (DeepSpeed) and before building the optimizer.
    """
    what = "the init state dict" if isinstance(source, Mapping) else f"checkpoint {source}"
    mixer = is_mixer(model)
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source, mixer=mixer)
    source_name = "<state dict>" if isinstance(source, Mapping) else str(source)
    if not mixer:
        return load_timm_init(model, state, what, source_name, img_size_pretrained=img_size_pretrained,
                              drop_head=drop_head)
    model_state = model.state_dict()
    old_grid = state_dict_grid(state, img_size_pretrained, what)
    new_grid = state_dict_grid(model_state, img_size, "the model")
    check_patch_size(state, model_state, what)
    factors = scale_factors(old_grid, new_grid, tuple(state[STEM_WEIGHT].shape[-2:]))
    state = expand_token_mixing(state, old_grid, new_grid)

    state, missing_head = drop_mismatched_head(model, state, what, drop_head)
    check_fits(state, model_state, what, ignore_missing=missing_head or (), expected_shape=_expected_shape)
    match_token_mixing_width(model, state)
    model.load_state_dict(state, strict=False)
    if missing_head is not None:
        zero_head(model)
    return InitReport(source_name, old_grid, new_grid, factors, head_dropped=missing_head is not None)


def _expected_shape(key: str, model_shape: tuple, state_shape: tuple) -> tuple:
    """The model's shape for ``key``, except the token-mixing hidden width, which follows the checkpoint
    (``match_token_mixing_width`` then widens the model to fit)."""
    match = TOKEN_MIXING_KEY.match(key)
    if match is None:
        return model_shape
    layer, kind = match.groups()
    if layer == "fc1":
        return state_shape[:1] + model_shape[1:]
    return model_shape[:1] + state_shape[1:] if kind == "weight" else model_shape
