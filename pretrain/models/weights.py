"""Loading MLP-Mixer weights from timm-style and official Flax checkpoints; saving them as safetensors.

``read_weights(path, mixer=False)`` reads any other model's state dict (a timm model's) from the torch formats.

Accepted files:
- ``.pth``/``.pt``/``.bin``: a state dict with timm's names (``torch.load(weights_only=True)``), possibly
  wrapped under ``"state_dict"`` or ``"model"``;
- ``.safetensors``: the same names;
- ``.npz``: an official Flax checkpoint (``stem/kernel`` HWIO, ``MixerBlock_{i}/...``,
  ``pre_head_layer_norm/...``, ``head/...``; Dense kernels are (in, out)). The official models use
  tanh-approximated GELU: build the model with ``gelu="tanh"`` to reproduce their outputs exactly.

A leading ``module.`` (DataParallel/DDP) on every key is removed. Every key and shape is checked before
anything is copied, so a wrong variant or class count raises ``WeightsError`` naming the first offending key
and leaves the model untouched.

``mixer_shapes`` reads a Mixer's sizes from its state dict (for ``mixer_for_weights`` and fine-tuning's token
grids); ``without_head`` drops a classifier's entries (here and in fine-tuning's head drop).
"""

import argparse
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fileio.atomic import atomic_path

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
STEM_WEIGHT = "stem.proj.weight"
TOKEN_MIXING_WEIGHT = "blocks.0.mlp_tokens.fc1.weight"
CHANNEL_MIXING_WEIGHT = "blocks.0.mlp_channels.fc1.weight"
HEAD_PREFIX = "head."
_LIST_LIMIT = 5
_READ_ERRORS = (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile, SafetensorError)


class WeightsError(ValueError):
    """A checkpoint that is unreadable, not an MLP-Mixer, or does not fit the model."""


@dataclass(frozen=True)
class MixerShapes:
    """The sizes of an MLP-Mixer as the tensors of its state dict give them (``num_classes`` 0: no head)."""

    num_classes: int
    in_chans: int
    patch_size: tuple[int, int]
    embed_dim: int
    num_blocks: int
    num_tokens: int
    tokens_dim: int

    def grid(self, img_size: int | tuple[int, int] | None, what: str) -> tuple[int, int]:
        """The token grid for ``img_size`` (int or (H, W)), checked against the token count; a square grid from
        the token count when it is None. ``what`` names the model or checkpoint in a WeightsError."""
        num_tokens, patch = self.num_tokens, self.patch_size
        if img_size is None:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise WeightsError(f"{what} has {num_tokens} tokens, not a square grid; give its image size explicitly")
            return side, side
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if size[0] % patch[0] or size[1] % patch[1]:
            raise WeightsError(f"{what}: image size {_fmt(size)} is not a multiple of the patch {_fmt(patch)}")
        grid = (size[0] // patch[0], size[1] // patch[1])
        if grid[0] * grid[1] != num_tokens:
            raise WeightsError(
                f"{what}: image size {_fmt(size)} with patch {_fmt(patch)} gives grid {_fmt(grid)} "
                f"({grid[0] * grid[1]} tokens), but its token-mixing weights are for {num_tokens} tokens"
            )
        return grid


def _fmt(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def mixer_shapes(state: Mapping[str, torch.Tensor], what: str = "the state dict") -> MixerShapes:
    """The sizes of the Mixer whose state dict is ``state`` (from its stem, first token-mixing layer and head);
    a WeightsError naming ``what`` when it has no stem or token mixing."""
    missing = [k for k in (STEM_WEIGHT, TOKEN_MIXING_WEIGHT) if k not in state]
    if missing:
        raise WeightsError(f"{what} is not an MLP-Mixer state dict: it has no {' or '.join(missing)}")
    embed_dim, in_chans, *patch = state[STEM_WEIGHT].shape
    tokens_dim, num_tokens = state[TOKEN_MIXING_WEIGHT].shape
    head = state.get(HEAD_PREFIX + "weight")
    return MixerShapes(
        num_classes=0 if head is None else head.shape[0],
        in_chans=in_chans,
        patch_size=tuple(patch),
        embed_dim=embed_dim,
        num_blocks=1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks.")),
        num_tokens=num_tokens,
        tokens_dim=tokens_dim,
    )


def without_head(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = (HEAD_PREFIX,)
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` without the classifier's entries: the keys under ``prefixes`` (a Mixer's: ``head.``)."""
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def load_weights(model: nn.Module, path: str | os.PathLike, drop_head: bool = False) -> None:
    """Load the checkpoint at ``path`` into an MlpMixer; ``drop_head`` keeps the model's own head."""
    path = Path(path)
    state = read_weights(path)
    if drop_head:
        state = without_head(state)
    _check_fits(model, state, path, drop_head)
    model.load_state_dict(state, strict=not drop_head)


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write a model's (or a state dict's) tensors to ``path`` (.safetensors) atomically, with ``metadata`` (strings)
    in its header beside ``format: pt``.

    Loadable by load_weights and by timm.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"save_weights writes .safetensors files, got {path}")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={**(metadata or {}), "format": "pt"})


def read_weights(path: str | os.PathLike, mixer: bool = True) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` (.pth/.pt/.bin, .safetensors, official .npz) as a state dict with timm's names.

    With ``mixer`` (the default) it must be an MLP-Mixer's; ``mixer=False`` reads any model's state dict from a
    .pth/.pt/.bin or .safetensors file (.npz files are official Mixer checkpoints only).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz" and not mixer:
        raise WeightsError(f"{path}: .npz weights are read as official MLP-Mixer checkpoints only; for this model "
                           "give a .safetensors or .pth state dict")
    if suffix not in (*_TORCH_SUFFIXES, ".safetensors", ".npz"):
        raise WeightsError(
            f"{path}: unknown weights format {suffix!r} (expected .pth, .pt, .bin, .safetensors, .npz)"
        )
    try:
        if suffix == ".safetensors":
            state = load_file(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                state = _from_flax({k: npz[k] for k in npz.files}, path)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train checkpoints hold args
                state = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path, mixer)
    except WeightsError:
        raise
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: cannot read weights: it holds pickled objects, not just tensors "
            "(save model.state_dict(), or use save_weights)"
        ) from err
    except _READ_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"{path}: cannot read weights: {first_line}") from err
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if mixer and STEM_WEIGHT not in state:
        raise WeightsError(
            f"{path}: not an MLP-Mixer checkpoint (no {STEM_WEIGHT!r} among its {len(state)} keys)"
        )
    return state


def _unwrap(obj: object, path: Path, mixer: bool) -> dict[str, torch.Tensor]:
    """The state dict inside a torch checkpoint: the object itself or its 'state_dict'/'model'/'module' entry."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not {'an MLP-Mixer' if mixer else 'a'} checkpoint (no state dict of tensors)")
    return obj


def _from_flax(arrays: dict[str, np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    """Official Flax Mixer arrays -> timm-named tensors (HWIO conv -> OIHW, (in, out) Dense -> (out, in))."""
    if "stem/kernel" not in arrays:
        raise WeightsError(
            f"{path}: not an MLP-Mixer checkpoint (no 'stem/kernel' among its {len(arrays)} arrays)"
        )
    state = {}
    for key, array in arrays.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if key.endswith("/kernel"):
            tensor = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.T
        state[_timm_name(key)] = tensor.contiguous()
    return state


def _timm_name(flax_key: str) -> str:
    """'MixerBlock_3/token_mixing/Dense_1/kernel' -> 'blocks.3.mlp_tokens.fc2.weight'; unknown parts kept."""
    parts = []
    for part in flax_key.split("/"):
        if part.startswith("MixerBlock_"):
            parts.append(f"blocks.{part.removeprefix('MixerBlock_')}")
        else:
            parts.append(_FLAX_PARTS.get(part, part))
    return ".".join(parts)


_FLAX_PARTS = {
    "stem": "stem.proj",
    "pre_head_layer_norm": "norm",
    "LayerNorm_0": "norm1",
    "LayerNorm_1": "norm2",
    "token_mixing": "mlp_tokens",
    "channel_mixing": "mlp_channels",
    "Dense_0": "fc1",
    "Dense_1": "fc2",
    "kernel": "weight",
    "scale": "weight",
}


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path, drop_head: bool) -> None:
    """Raise WeightsError unless ``state`` has exactly the model's keys (head aside if dropped) and shapes."""
    expected = without_head(model.state_dict()) if drop_head else model.state_dict()
    for key, value in expected.items():
        if key in state and state[key].shape != value.shape:
            hint = " (drop_head=True keeps the model's own head)" if key.startswith(HEAD_PREFIX) else ""
            raise WeightsError(
                f"{path}: shape mismatch for {key}: checkpoint {tuple(state[key].shape)}, "
                f"model {tuple(value.shape)}{hint}"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(f"{path}: checkpoint lacks {len(missing)} model key(s): {_listing(missing)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(
            f"{path}: checkpoint has {len(unexpected)} key(s) the model lacks: {_listing(unexpected)}"
        )


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown if len(keys) <= _LIST_LIMIT else f"{shown} ... (+{len(keys) - _LIST_LIMIT} more)"
