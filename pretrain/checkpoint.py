"""Checkpoints of a DeepSpeed run: tagged folders, a `latest` pointer moved only after a complete save, pruning.

Layout under `checkpoints/`: `step-00001000/` (DeepSpeed's files, the full fp32 weights as `model.safetensors`, our
`meta.json` written last by rank 0), `latest` (the tag of the newest complete checkpoint). A kill during a save
leaves `latest` on the previous one; the half-written folder is removed by the next save. `engine.save_checkpoint`
is collective: every rank calls `save`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.atomic import atomic_write_text
from pretrain.distributed import barrier

META = "meta.json"
POINTER = "latest"
WEIGHTS = "model.safetensors"
FINAL = "final.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here (another model, another world size, a broken pointer)."""


def rng_state() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and restores DeepSpeed engines under `directory`, keeping the newest `keep` complete checkpoints."""

    def __init__(self, directory: str | os.PathLike, keep: int, rank: int) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.rank = rank

    def latest_tag(self) -> str | None:
        pointer = self.dir / POINTER
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        if not (self.dir / tag / META).is_file():
            raise CheckpointError(f"{pointer} names {tag!r}, which is not a complete checkpoint")
        return tag

    def meta(self, tag: str) -> dict[str, Any]:
        return json.loads((self.dir / tag / META).read_text())

    def save(self, engine, step: int, meta: dict[str, Any], client_state: dict[str, Any]) -> str:
        """Collective save of `engine` (and its fp32 weights) at `step`; returns the tag once `latest` points at it."""
        from pretrain.export import export_weights
        tag = f"step-{step:08d}"
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.dir / tag, ignore_errors=True)  # a half-written save of the same step
        barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        export_weights(engine, self.dir / tag / WEIGHTS, self.rank)
        barrier()
        if self.rank == 0:
            atomic_write_text(self.dir / tag / META, json.dumps({**meta, "step": step}, indent=1))
            atomic_write_text(self.dir / POINTER, tag + "\n")
            self._prune(keep_tag=tag)
        barrier()
        return tag

    def load(self, engine, expect: dict[str, Any]) -> dict[str, Any] | None:
        """Restore `engine` from `latest` after checking `expect` against the saved meta; None if there is none."""
        tag = self.latest_tag()
        if tag is None:
            return None
        saved = self.meta(tag)
        for key, value in expect.items():
            if saved.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {self.dir / tag} was written with {key}={saved.get(key)!r}, this run has "
                    f"{key}={value!r}; resume with the same setting or start a new run dir")
        _, client_state = engine.load_checkpoint(
            str(self.dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if client_state is None:
            raise CheckpointError(f"DeepSpeed could not load {self.dir / tag}")
        return client_state

    def _prune(self, keep_tag: str) -> None:
        """Remove incomplete folders and all but the newest `keep` complete checkpoints."""
        tags = sorted(p.name for p in self.dir.glob("step-*") if p.is_dir())
        complete = [t for t in tags if (self.dir / t / META).is_file()]
        doomed = [t for t in tags if t not in complete and t != keep_tag] + complete[: -self.keep]
        for tag in doomed:
            shutil.rmtree(self.dir / tag, ignore_errors=True)


def resolve_weights(path: str | os.PathLike) -> Path:
    """The fp32 `.safetensors` behind a run dir, a `checkpoints/` dir or one checkpoint's folder.

    A run dir gives its `final.safetensors`, or else the weights of its `latest` checkpoint.
    """
    path = Path(path)
    for candidate in (path / FINAL, path / WEIGHTS):
        if candidate.is_file():
            return candidate
    for folder in (path / "checkpoints", path):
        tag = Checkpointer(folder, keep=1, rank=0).latest_tag()
        if tag is not None:
            return folder / tag / WEIGHTS
    raise CheckpointError(f"{path} holds no weights: expected {FINAL}, {WEIGHTS} or a checkpoints/{POINTER} pointer")
