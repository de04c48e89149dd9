"""Named MLP-Mixer variants (paper Table 1, plus a tiny demo model) and the factory that builds them."""

import math
from collections.abc import Mapping
from typing import Any

import torch

from pretrain.models.mixer import MlpMixer

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
    """Names accepted by ``create_model``, sorted."""
    return sorted(_VARIANTS)


def model_patch_size(name: str) -> int | None:
    """The patch size of the named variant, or None when ``name`` is not one of ours."""
    return _VARIANTS.get(name, {}).get("patch_size")


def create_model(name: str, **overrides: Any) -> MlpMixer:
    """Build the named Mixer variant; ``overrides`` may set num_classes, img_size, in_chans, patch_size,
    drop_rate, drop_path_rate, init and gelu."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    fixed = sorted(set(overrides) - _OVERRIDABLE)
    if fixed:
        raise ValueError(
            f"cannot override {', '.join(fixed)} of {name}; overridable: {', '.join(sorted(_OVERRIDABLE))}"
        )
    return MlpMixer(**{**_VARIANTS[name], **overrides})


def mixer_for_weights(state: Mapping[str, torch.Tensor], img_size: int | tuple[int, int] | None = None) -> MlpMixer:
    """An MlpMixer whose shapes fit the state dict `state` (a square image unless `img_size` is given)."""
    embed_dim, in_chans, patch_size, _ = state["stem.proj.weight"].shape
    tokens_dim, num_tokens = state["blocks.0.mlp_tokens.fc1.weight"].shape
    num_blocks = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    if img_size is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"{num_tokens} tokens do not form a square grid; give the image size")
        img_size = side * patch_size
    return MlpMixer(num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0, img_size=img_size,
                    in_chans=in_chans, patch_size=patch_size, num_blocks=num_blocks, embed_dim=embed_dim,
                    tokens_dim=tokens_dim, channels_dim=state["blocks.0.mlp_channels.fc1.weight"].shape[0])
