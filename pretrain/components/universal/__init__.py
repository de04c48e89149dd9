"""Resuming a checkpoint on another layout (world size, ZeRO stage, precision) through DeepSpeed's universal format.

A DeepSpeed checkpoint is cut to the layout that wrote it: ZeRO 1-3 keep each rank's flat partition of the fp32
weights and of the optimizer moments, ZeRO-0 keeps one unpartitioned torch optimizer state. A resume on another
layout goes through one world-size- and stage-free copy of the checkpoint, written once next to it
(`checkpoints/step-N.universal/`, kept with the checkpoint and pruned with it).

Two jobs, two modules: `convert` writes that copy offline from the checkpoint's files
(`pretrain.components.universal.convert`); `load` brings it into a live engine of any stage and repairs what
DeepSpeed's loaders leave out (`pretrain.components.universal.load`). The format both share is in
`pretrain.components.universal.files`; every private DeepSpeed access in `pretrain.components.ds_internals`. This
module holds what the checkpointer needs to decide whether a checkpoint fits the run (no DeepSpeed import).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

UNIVERSAL_SUFFIX = ".universal"
PARTIAL_SUFFIX = ".universal.partial"
FAILED_SUFFIX = ".universal.failed"
# What makes a checkpoint's engine state fit a run: the meta keys that pick DeepSpeed's checkpoint format.
LAYOUT = ("world_size", "zero_stage", "precision", "grad_accum_dtype")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class ConversionError(ValueError):
    """The checkpoint cannot be brought to this run's layout (the message says why)."""


def layout_changes(saved: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """The layout keys in which the checkpoint's meta differs from this run's. A key the checkpoint does not record
    (written before it was recorded) counts as unchanged, except the world size, which the meta leaves out
    (None) under ZeRO-0, whose checkpoints fit every world size."""
    keys = [k for k in LAYOUT if k in expect and (k in saved or k == "world_size")]
    return [k for k in keys if saved.get(k) != expect.get(k)]


def engine_layout(ds) -> dict[str, str | None]:
    """The layout keys a DeepSpeed engine decides itself: its precision and, but in fp32, its gradient accumulation
    dtype (bf16 ZeRO-1 with fp32 accumulation is DeepSpeed's BF16_Optimizer, with bf16 its ZeRO optimizer). Empty
    for what is not an engine."""
    if not hasattr(ds, "get_data_types"):
        return {}
    model, accum = (DTYPE_NAMES.get(d, str(d)) for d in ds.get_data_types())
    return {"precision": model, "grad_accum_dtype": None if model == "fp32" else accum}


def describe(meta: Mapping[str, Any]) -> str:
    """`world_size=2, zero_stage=1, precision=bf16` (the keys the meta records)."""
    return ", ".join(f"{k}={meta[k]}" for k in LAYOUT if k in meta and meta[k] is not None)


def universal_dir(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + UNIVERSAL_SUFFIX)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
