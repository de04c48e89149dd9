"""Higher-resolution fine-tuning of MLP-Mixer: block-diagonal expansion of the token-mixing MLPs.

MLP-Mixer paper, Appendix C. A model pretrained on an ``h x w`` token grid is fine-tuned on a
``(K_h h) x (K_w w)`` grid (same patch size, larger image). The new grid is cut into ``K_h x K_w``
parts, each a contiguous ``h x w`` window (part ``(p, q)`` covers token rows ``p*h .. p*h+h-1`` and
columns ``q*w .. q*w+w-1``), and every token-mixing MLP is expanded so it mixes the tokens of each part
independently with the pretrained weights. The expanded model therefore starts as exactly the
pretrained network applied to each part (channel mixing, LayerNorm and the stem act per token), and
its pooled pre-logits are the mean of the parts' pre-logits. The paper states ``K_h = K_w = K``; we
allow an integer factor per side.

Tokens are flattened row-major over the new grid (as the stem does), so token ``(r, c)`` has index
``r * K_w w + c``. In the part-major order (part ``(p, q)``, then row-major inside the part) the
expanded weights are block-diagonal: ``W1' = blockdiag(W1, .., W1) P`` and ``W2' = P^T blockdiag(W2,
.., W2)``, with ``P`` the permutation from row-major to part-major tokens. The hidden units are
ordered ``(part, unit)``; any order works as long as ``fc1`` rows and ``fc2`` columns agree. The
biases are tiled the same way. The expanded MLPs are ``K_h K_w`` times wider (``D_S`` -> ``K_h K_w D_S``)
than those of a model built at the new resolution, so the model's token-mixing layers are widened to
match (``widen_token_mixing``); after fine-tuning, the off-diagonal blocks are ordinary weights.
Parameter names are timm's (``blocks.{i}.mlp_tokens.fc1/fc2``), which our Mixer shares; ``fc1.weight``
has shape ``(D_S, tokens)`` and ``fc2.weight`` ``(tokens, D_S)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import einops
import torch
from torch import nn

from finetune.errors import FinetuneError
from pretrain.models.weights import STEM_WEIGHT, TOKEN_MIXING_WEIGHT, WeightsError, mixer_shapes

Grid = tuple[int, int]

TOKEN_MIXING_KEY = re.compile(r"^blocks\.\d+\.mlp_tokens\.(fc1|fc2)\.(weight|bias)$")


class ResolutionError(FinetuneError):
    """The new token grid is not an integer multiple of the pretrained one (or cannot be determined)."""


def _fmt(grid: Grid) -> str:
    return f"{grid[0]}x{grid[1]}"


def scale_factors(old_grid: Grid, new_grid: Grid, patch_size: Grid = (1, 1)) -> Grid:
    """``(K_h, K_w)`` with ``new_grid == (K_h * old_h, K_w * old_w)``; ``ResolutionError`` otherwise.

    ``patch_size`` only serves the error message, which names image sizes as well as grids.
    """
    factors = tuple(n // o for n, o in zip(new_grid, old_grid, strict=True))
    if all(f >= 1 and f * o == n for f, o, n in zip(factors, old_grid, new_grid, strict=True)):
        return factors
    old_img = (old_grid[0] * patch_size[0], old_grid[1] * patch_size[1])
    new_img = (new_grid[0] * patch_size[0], new_grid[1] * patch_size[1])
    examples = ", ".join(f"{k * old_img[0]}x{k * old_img[1]}" for k in (1, 2, 3))
    raise ResolutionError(
        f"cannot expand token mixing from grid {_fmt(old_grid)} (image {_fmt(old_img)}) to grid "
        f"{_fmt(new_grid)} (image {_fmt(new_img)}, patch {_fmt(patch_size)}): each side of the new image "
        f"must be an integer multiple of the pretrained one, e.g. {examples} (the two sides may use "
        f"different multiples)"
    )


def expand_fc1(
    weight: torch.Tensor, bias: torch.Tensor | None, old_grid: Grid, factors: Grid
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expanded ``(weight, bias)`` of a token-mixing ``fc1``: ``(D_S, h w)`` -> ``(K D_S, K h w)``, K=K_h K_w.

    Rows are ordered ``(part, unit)``, columns are the new grid's tokens in row-major order.
    """
    h, w = old_grid
    eye_h = torch.eye(factors[0], dtype=weight.dtype, device=weight.device)
    eye_w = torch.eye(factors[1], dtype=weight.dtype, device=weight.device)
    blocks = einops.rearrange(weight, "d (i j) -> d i j", i=h, j=w)
    # Entry [(p q d), (P i Q j)] = [p == P] [q == Q] W1[d, (i j)]: a product, never a sum, so exact.
    expanded = einops.einsum(eye_h, eye_w, blocks, "p P, q Q, d i j -> p q d P i Q j")
    expanded = einops.rearrange(expanded, "p q d P i Q j -> (p q d) (P i Q j)")
    if bias is None:
        return expanded, None
    return expanded, einops.repeat(bias, "d -> (k d)", k=factors[0] * factors[1])


def expand_fc2(
    weight: torch.Tensor, bias: torch.Tensor | None, old_grid: Grid, factors: Grid
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expanded ``(weight, bias)`` of a token-mixing ``fc2``: ``(h w, D_S)`` -> ``(K h w, K D_S)``, K=K_h K_w.

    Rows are the new grid's tokens in row-major order, columns ``(part, unit)`` as in ``expand_fc1``.
    """
    h, w = old_grid
    eye_h = torch.eye(factors[0], dtype=weight.dtype, device=weight.device)
    eye_w = torch.eye(factors[1], dtype=weight.dtype, device=weight.device)
    blocks = einops.rearrange(weight, "(i j) d -> i j d", i=h, j=w)
    expanded = einops.einsum(eye_h, eye_w, blocks, "P p, Q q, i j d -> P i Q j p q d")
    expanded = einops.rearrange(expanded, "P i Q j p q d -> (P i Q j) (p q d)")
    if bias is None:
        return expanded, None
    bias = einops.rearrange(bias, "(i j) -> i j", i=h, j=w)
    return expanded, einops.repeat(bias, "i j -> (P i Q j)", P=factors[0], Q=factors[1])


def expand_token_mixing(
    state_dict: Mapping[str, torch.Tensor], old_grid: Grid, new_grid: Grid
) -> dict[str, torch.Tensor]:
    """A copy of a Mixer ``state_dict`` with its token-mixing MLPs expanded from ``old_grid`` to ``new_grid``.

    All other entries are passed through unchanged (the model has no position embedding). Same grid:
    the entries are returned as they are. Raises ``ResolutionError`` for a non-integer ratio.
    """
    patch = tuple(state_dict[STEM_WEIGHT].shape[-2:]) if STEM_WEIGHT in state_dict else (1, 1)
    factors = scale_factors(tuple(old_grid), tuple(new_grid), patch)
    out = dict(state_dict)
    if factors == (1, 1):
        return out
    tokens = old_grid[0] * old_grid[1]
    for key in state_dict:
        match = TOKEN_MIXING_KEY.match(key)
        if match is None or match.group(2) == "bias":
            continue
        prefix = key[: -len(".weight")]
        weight, bias = state_dict[key], state_dict.get(prefix + ".bias")
        token_dim = 1 if match.group(1) == "fc1" else 0
        if weight.shape[token_dim] != tokens:
            raise ResolutionError(
                f"{key} has shape {tuple(weight.shape)}, which does not fit the {_fmt(old_grid)} grid "
                f"({tokens} tokens)"
            )
        expand = expand_fc1 if match.group(1) == "fc1" else expand_fc2
        out[key], new_bias = expand(weight, bias, old_grid, factors)
        if new_bias is not None:
            out[prefix + ".bias"] = new_bias
    return out


def state_dict_grid(state_dict: Mapping[str, torch.Tensor], img_size: int | Grid | None, what: str) -> Grid:
    """The token grid of a Mixer state dict at ``img_size`` (square from its token count when None), checked
    against its token-mixing weights (``pretrain.models.weights.mixer_shapes``); ResolutionError otherwise."""
    try:
        return mixer_shapes(state_dict, what).grid(img_size, what)
    except WeightsError as err:
        raise ResolutionError(str(err)) from None


def widen_token_mixing(model: nn.Module, hidden: int) -> None:
    """Replace every block's ``mlp_tokens.fc1``/``fc2`` by layers of their class of width ``hidden``, in place.

    Token counts, device and dtype are kept; the new layers are meant to be overwritten by a state dict.
    A model built at the fine-tuning resolution has the pretrained width ``D_S``; the expanded weights
    need ``K_h K_w D_S``.
    """
    for block in model.blocks:
        fc1, fc2 = block.mlp_tokens.fc1, block.mlp_tokens.fc2
        like = {"device": fc1.weight.device, "dtype": fc1.weight.dtype}
        block.mlp_tokens.fc1 = type(fc1)(fc1.in_features, hidden, bias=fc1.bias is not None, **like)
        block.mlp_tokens.fc2 = type(fc2)(hidden, fc2.out_features, bias=fc2.bias is not None, **like)


def convert_for_model(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    img_size_pretrained: int | Grid | None = None,
    img_size: int | Grid | None = None,
) -> dict[str, torch.Tensor]:
    """``state_dict`` (pretrained at ``img_size_pretrained``) expanded for ``model`` (built at ``img_size``).

    A size left as None is taken as square and read from the token-mixing weight shapes. When the
    model's token-mixing hidden width differs from the expanded checkpoint's (a model built at the new
    resolution has ``D_S``, the expansion gives ``K_h K_w D_S``), the model's token-mixing layers are
    widened in place (``widen_token_mixing``), so call this before building the optimizer. The result
    is ready for ``model.load_state_dict``; stem, channel MLPs, norms and head are unchanged.
    """
    model_state = model.state_dict()
    old_grid = state_dict_grid(state_dict, img_size_pretrained, "the pretrained checkpoint")
    new_grid = state_dict_grid(model_state, img_size, "the model")
    check_patch_size(state_dict, model_state, "the pretrained checkpoint")
    expanded = expand_token_mixing(state_dict, old_grid, new_grid)
    match_token_mixing_width(model, expanded)
    return expanded


def check_patch_size(
    state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise ``ResolutionError`` when the checkpoint's patch size differs from the model's."""
    patch, model_patch = (_fmt(tuple(sd[STEM_WEIGHT].shape[-2:])) for sd in (state_dict, model_state))
    if patch != model_patch:
        raise ResolutionError(
            f"{what} has patch size {patch} but the model {model_patch}; only the image size may change"
        )


def match_token_mixing_width(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Widen ``model``'s token-mixing MLPs in place to the state dict's hidden width when they differ."""
    hidden = state_dict[TOKEN_MIXING_WEIGHT].shape[0]
    if model.blocks[0].mlp_tokens.fc1.out_features != hidden:
        widen_token_mixing(model, hidden)
