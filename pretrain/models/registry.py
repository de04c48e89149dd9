"""Named MLP-Mixer variants (paper Table 1, plus a tiny demo model) and the factory that builds them or any timm model.

``create_model(name)`` builds our own MlpMixer for the names of ``list_models()`` and, for any other name timm
knows (``deit_small_patch16_224``, ``convit_small``, ``resnet50``, ...), timm's model (``pretrain.models.timm_models``).
``model_problem`` says why a name or an override cannot be built, so configs are checked before a run starts.
"""

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pretrain.models.mixer import MlpMixer
from pretrain.models.timm_models import create_timm_model, is_timm_model, list_timm_models, timm_override_problem
from pretrain.models.weights import CHANNEL_MIXING_WEIGHT, mixer_shapes

# layers / patch / hidden C / token-mixing D_S / channel-mixing D_C, as in the paper's Table 1.
_VARIANTS: dict[str, dict[str, int]] = {
    "mixer_s32": dict(num_blocks=8, patch_size=32, embed_dim=512, tokens_dim=256, channels_dim=2048),
    "mixer_s16": dict(num_blocks=8, patch_size=16, embed_dim=512, tokens_dim=256, channels_dim=2048),
    "mixer_b32": dict(num_blocks=12, patch_size=32, embed_dim=768, tokens_dim=384, channels_dim=3072),
    "mixer_b16": dict(num_blocks=12, patch_size=16, embed_dim=768, tokens_dim=384, channels_dim=3072),
    "mixer_l32": dict(num_blocks=24, patch_size=32, embed_dim=1024, tokens_dim=512, channels_dim=4096),
    "mixer_l16": dict(num_blocks=24, patch_size=16, embed_dim=1024, tokens_dim=512, channels_dim=4096),
    "mixer_h14": dict(num_blocks=32, patch_size=14, embed_dim=1280, tokens_dim=640, channels_dim=5120),
    # Tiny model for CPU demos and tests: 32x32 images (8x8 tokens), or 64x64 (16x16 tokens) to fine-tune at
    # twice the resolution with the same patch size; 10 classes (digits) unless overridden.
    "mixer_demo": dict(
        num_blocks=4,
        patch_size=4,
        embed_dim=128,
        tokens_dim=64,
        channels_dim=512,
        img_size=32,
        num_classes=10,
    ),
}

# What a caller may change on a named variant; depth and widths define the variant and stay fixed.
_OVERRIDABLE = frozenset(
    {"num_classes", "img_size", "in_chans", "patch_size", "drop_rate", "drop_path_rate", "init", "gelu"}
)


def list_models() -> list[str]:
    """Our MLP-Mixer variants, sorted (``create_model`` also accepts any timm model name)."""
    return sorted(_VARIANTS)


def model_patch_size(name: str) -> int | None:
    """The patch size of the named variant, or None when ``name`` is not one of ours."""
    return _VARIANTS.get(name, {}).get("patch_size")


def is_mixer(model: nn.Module) -> bool:
    """True for our MlpMixer (block-diagonal expansion, weight pictures and .npz weights apply to it only)."""
    return isinstance(model, MlpMixer)


def model_problem(name: str, **overrides: Any) -> tuple[str, str] | None:
    """``(key, message)`` saying why ``create_model(name, **overrides)`` cannot build, or None when it can.

    ``key`` is ``"name"`` for an unknown model, else the offending override.
    """
    if name in _VARIANTS:
        fixed = sorted(set(overrides) - _OVERRIDABLE)
        if fixed:
            return fixed[0], (f"cannot override {', '.join(fixed)} of {name}; overridable: "
                              f"{', '.join(sorted(_OVERRIDABLE))}")
        return None
    if not is_timm_model(name):
        close = _closest(name, [*_VARIANTS, *list_timm_models()])
        hint = f"closest: {', '.join(close)}" if close else (
            f"an MLP-Mixer variant ({', '.join(list_models())}) or a timm model name")
        return "name", f"unknown model {name!r}; {hint}"
    return timm_override_problem(name, overrides)


def _closest(name: str, names: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` names that extend ``name`` (a truncated name), then the most similar ones (difflib)."""
    extending = sorted((k for k in names if k.startswith(name)), key=len)[:n]
    similar = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    return list(dict.fromkeys([*extending, *similar]))[:n]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the named Mixer variant, or timm model ``name`` (not pretrained).

    ``overrides`` may set num_classes, img_size, in_chans, patch_size, drop_rate, drop_path_rate, and for Mixers
    init and gelu (timm models accept them only at their defaults). See ``timm_models`` for what applies to timm.
    """
    problem = model_problem(name, **overrides)
    if problem is not None:
        raise ValueError(problem[1])
    if name in _VARIANTS:
        return MlpMixer(**{**_VARIANTS[name], **overrides})
    return create_timm_model(name, **overrides)


def variant_of_weights(state: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """The named variant whose depth and widths the Mixer state dict `state` has, and its patch size when it is not
    the variant's own (0 otherwise); None when no variant has them (or `state` is not a Mixer's)."""
    try:
        shapes = mixer_shapes(state, "the weights")
    except ValueError:
        return None
    dims = dict(num_blocks=shapes.num_blocks, embed_dim=shapes.embed_dim, tokens_dim=shapes.tokens_dim,
                channels_dim=state[CHANNEL_MIXING_WEIGHT].shape[0])
    patch = shapes.patch_size[0]
    same = [name for name, v in _VARIANTS.items() if all(v[k] == d for k, d in dims.items())]
    for name in same:
        if _VARIANTS[name]["patch_size"] == patch:
            return name, 0
    return (same[0], patch) if same else None


def mixer_for_weights(state: Mapping[str, torch.Tensor], img_size: int | tuple[int, int] | None = None) -> MlpMixer:
    """An MlpMixer whose shapes fit the state dict `state` (a square image unless `img_size` is given)."""
    shapes = mixer_shapes(state, "the weights")
    grid = shapes.grid(img_size, "the weights")  # checks a given img_size against the token count
    patch = shapes.patch_size[0]
    return MlpMixer(num_classes=shapes.num_classes, img_size=grid[0] * patch if img_size is None else img_size,
                    in_chans=shapes.in_chans, patch_size=patch, num_blocks=shapes.num_blocks,
                    embed_dim=shapes.embed_dim, tokens_dim=shapes.tokens_dim,
                    channels_dim=state[CHANNEL_MIXING_WEIGHT].shape[0])
