"""Pictures of learned weights, as in the MLP-Mixer paper's Figure 5.

Each hidden unit of a token-mixing MLP's first layer has one weight per input patch; reshaped to the patch
grid it shows which image regions the unit mixes. Every unit is scaled by its largest absolute weight, so 0
maps to grey (0.5) and the sign stays visible, then the units are tiled into one panel per block, panels
side by side, separated by white. The stem's convolution filters are tiled the same way, as RGB.

Parameters are found by name (``blocks.{i}.mlp_tokens.fc1.weight``, ``stem.proj.weight`` as in timm's
MlpMixer), also under a wrapper prefix such as DeepSpeed's ``module.``. Under ZeRO-3 gather the parameters
first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from fileio.atomic import atomic_path

TILE_GAP = 1
PANEL_GAP = 4
GAP_VALUE = 1.0
LEGIBLE_WIDTH = 960  # pixels across a picture in TensorBoard, at least


def find_parameter(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter called ``name`` or ``<prefix>.name``, detached, as float32 on the CPU."""
    for full_name, param in model.named_parameters():
        if full_name == name or full_name.endswith("." + name):
            if param.numel() == 0:
                raise ValueError(f"parameter {full_name} is empty (partitioned by ZeRO-3?); gather it first")
            return param.detach().float().cpu()
    raise ValueError(f"model has no parameter {name!r}")


def patch_grid(model: torch.nn.Module, num_tokens: int) -> tuple[int, int]:
    """(rows, cols) of the patch grid: the first ``grid_size`` of the model or a submodule, else a square."""
    grid = next((module.grid_size for module in model.modules() if hasattr(module, "grid_size")), None)
    if grid is not None:
        rows, cols = int(grid[0]), int(grid[1])
    else:
        rows = cols = math.isqrt(num_tokens)
    if rows * cols != num_tokens:
        raise ValueError(f"cannot lay {num_tokens} tokens on a {rows}x{cols} patch grid")
    return rows, cols


def normalize_symmetric(units: torch.Tensor) -> torch.Tensor:
    """Scale each unit (first axis) by its largest absolute value, map [-1, 1] to [0, 1]; 0 goes to 0.5."""
    flat = units.reshape(units.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)
    return ((flat / scale[:, None] + 1) / 2).reshape(units.shape)


def tile(tiles: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """Lay (U, C, h, w) tiles row by row into one (C, H, W) image, ``TILE_GAP`` white pixels between."""
    count, channels, height, width = tiles.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    padded = torch.full((rows * columns, channels, height + TILE_GAP, width + TILE_GAP), GAP_VALUE)
    padded[:count, :, :height, :width] = tiles
    grid = rearrange(padded, "(r c) ch h w -> ch (r h) (c w)", r=rows, c=columns)
    return grid[:, : grid.shape[1] - TILE_GAP, : grid.shape[2] - TILE_GAP]


def side_by_side(panels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Join (C, H_i, W_i) panels left to right, top-aligned, ``PANEL_GAP`` white columns between them."""
    height = max(p.shape[1] for p in panels)
    parts = []
    for index, panel in enumerate(panels):
        if index:
            parts.append(torch.full((panel.shape[0], height, PANEL_GAP), GAP_VALUE))
        column = torch.full((panel.shape[0], height, panel.shape[2]), GAP_VALUE)
        column[:, : panel.shape[1]] = panel
        parts.append(column)
    return torch.cat(parts, dim=2)


def token_mixing_image(
    model: torch.nn.Module, blocks: Sequence[int] = (0, 1), max_units: int = 64
) -> torch.Tensor:
    """(1, H, W) image of the first ``max_units`` token-mixing units of each block, one panel per block."""
    panels = []
    for block in blocks:
        weight = find_parameter(model, f"blocks.{block}.mlp_tokens.fc1.weight")[:max_units]  # (units, tokens)
        rows, cols = patch_grid(model, weight.shape[1])
        units = normalize_symmetric(weight).reshape(-1, 1, rows, cols)
        panels.append(tile(units))
    return side_by_side(panels)


def stem_filters_image(model: torch.nn.Module, max_units: int = 64) -> torch.Tensor:
    """(C_in, H, W) image of the first ``max_units`` patch-embedding filters, each scaled on its own."""
    weight = find_parameter(model, "stem.proj.weight")[:max_units]  # (filters, in_chans, p, p)
    return tile(normalize_symmetric(weight))


def enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Each pixel of a (C, H, W) image as a ``scale`` x ``scale`` block (nearest neighbour: no blur)."""
    return image.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def legible(image: torch.Tensor, width: int = LEGIBLE_WIDTH) -> torch.Tensor:
    """``image`` enlarged by the whole factor that brings it to at least ``width`` pixels across (TensorBoard
    shows an image at its own size: a 146-pixel picture of 8x8 weights is a blur)."""
    return enlarge(image, max(1, math.ceil(width / image.shape[-1])))


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> None:
    """Write a (1|3, H, W) or (H, W) image in [0, 1] as PNG, each pixel ``scale`` x ``scale``; atomic."""
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3) or scale < 1:
        raise ValueError(f"need a (H, W) or (1|3, H, W) image, scale >= 1; got {tuple(image.shape)}, {scale}")
    pixels = enlarge((image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu(), scale)
    array = np.ascontiguousarray(rearrange(pixels, "c h w -> h w c").numpy())
    picture = Image.fromarray(array[:, :, 0].copy() if array.shape[2] == 1 else array)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
