"""Checkpoints of a DeepSpeed run: tagged folders, a `latest` pointer moved only after a complete save, pruning.

Layout under `checkpoints/`: `step-00001000/` (DeepSpeed's files, the full fp32 weights as `model.safetensors`, our
`meta.json` written last by rank 0), `latest` (the tag of the newest complete checkpoint). A kill during a save
leaves `latest` on the previous one; the half-written folder is removed by the next save. `engine.save_checkpoint`
is collective: every rank calls `save`.

A checkpoint resumes on any world size and ZeRO stage: where its layout (meta `world_size`, `zero_stage`,
`precision`, `grad_accum_dtype`) differs from the run's, it is loaded through its universal copy
`step-00001000.universal/`, converted once and pruned with it (`pretrain/components/universal/`).

Each checkpoint's meta records the id of the run that wrote it (`run_id`, drawn by a new run, taken over by a
resume), and pruning only ever removes complete checkpoints of this run: whatever else sits in the folder stays.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fileio.atomic import atomic_write_text
from pretrain.cluster.distributed import barrier, gather
from pretrain.components.ds_internals import universal_checkpoint_info
from pretrain.components.universal import (
    FAILED_SUFFIX,
    LAYOUT,
    PARTIAL_SUFFIX,
    UNIVERSAL_SUFFIX,
    ConversionError,
    describe,
    engine_layout,
    layout_changes,
    universal_dir,
)
from pretrain.components.universal.convert import SHORT_WRITE

log = logging.getLogger(__name__)

META = "meta.json"
POINTER = "latest"
WEIGHTS = "model.safetensors"
FINAL = "final.safetensors"
FINAL_EMA = "final_ema.safetensors"
# Meta keys a resume must match. The layout keys (world_size, zero_stage, precision, grad_accum_dtype) may differ:
# the engine state is then loaded through the checkpoint's universal copy (pretrain/components/universal/).
CHECKED = ("model", "img_size", "num_classes", "patch_size", "permute", "global_batch", "micro_batch")
TAG = re.compile(r"step-\d+")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here (another model, another world size, a broken pointer)."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class Checkpointer:
    """Saves and restores a run under `directory`: the DeepSpeed engine (model, optimizer, schedule) and the
    `states` of the other components, keeping the newest `keep` complete checkpoints.

    `meta` is what a resume must match (a mismatch is a one-line CheckpointError), and the layout (world size,
    ZeRO stage), which may differ; the engine's precision and gradient accumulation dtype are added to it.
    `run_id` names the run in the metas it writes (rank 0's matters: it writes them and prunes); `restore` takes
    over the restored checkpoint's.
    `every_steps` sets when `due` says a periodic save is due. `state_dict` of a component may be a collective
    (every rank calls `save`).
    """

    def __init__(self, directory: str | os.PathLike, keep: int, rank: int, *, every_steps: int = 0, engine=None,
                 states: Mapping[str, Stateful] | None = None, meta: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(directory)
        self.keep, self.rank, self.every_steps = keep, rank, every_steps
        self.engine = engine
        self.states = dict(states or {})
        self.expect = {**(meta or {}), **engine_layout(engine)}
        self.run_id: str | None = secrets.token_hex(8)

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

    def due(self, step: int) -> bool:
        """True on the steps of the periodic save."""
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, step: int) -> str:
        """Collective save at `step`; returns the tag once `latest` points at it. A failed write (a full disk, a
        quota) is a CheckpointError on every rank, the half-written folder is removed and `latest` stays put."""
        from pretrain.components.export import export_weights  # imports DeepSpeed: only where a run saves

        tag = f"step-{step:08d}"
        client_state = {name: component.state_dict() for name, component in self.states.items()}
        client_state.update(universal_checkpoint_info())
        in_the_way = None
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if (self.dir / tag / META).is_file() and self.meta(tag).get("run_id") != self.run_id:
                in_the_way = f"{self.dir / tag} is a checkpoint of another run; move it away or start in a new run dir"
            else:
                shutil.rmtree(self.dir / tag, ignore_errors=True)  # a half-written save of the same step
                shutil.rmtree(self.dir / (tag + UNIVERSAL_SUFFIX), ignore_errors=True)  # converted from the old one
        in_the_way = gather(in_the_way)[0]  # and every rank waits for rank 0's clean-up
        if in_the_way:
            raise CheckpointError(in_the_way)
        failure = None
        try:
            self.engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        except (OSError, RuntimeError) as err:
            failure = err
            # A write that failed on this rank skipped DeepSpeed's closing barrier, where the other ranks now wait:
            # meet them there, so the collectives below stay matched (every rank then raises the same error).
            barrier()
        try:
            export_weights(self.engine, self.dir / tag / WEIGHTS, self.rank)  # every rank: collective under ZeRO-3
        except Exception as err:  # also safetensors' SafetensorError (a full disk): every rank must reach
            failure = failure or err  # _check_written, which names it
        self._check_written(tag, failure)
        if self.rank == 0:
            try:
                atomic_write_text(self.dir / tag / META,
                                  json.dumps({**self.expect, "step": step, "run_id": self.run_id}, indent=1))
                atomic_write_text(self.dir / POINTER, tag + "\n")
            except OSError as err:
                failure = err
        self._check_written(tag, failure)
        if self.rank == 0:
            self._prune(keep_tag=tag)
        barrier()
        return tag

    def _check_written(self, tag: str, failure: BaseException | None) -> None:
        """Raise on every rank when any rank failed to write its part of `tag` (a collective)."""
        failures = [f for f in gather(None if failure is None else str(failure)) if f is not None]
        if not failures:
            return
        if self.rank == 0:
            shutil.rmtree(self.dir / tag, ignore_errors=True)
        latest = self.latest_tag()
        kept = f"{latest} stays the latest checkpoint" if latest else "there is no earlier checkpoint"
        full = isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or any(marker in f for f in failures for marker in SHORT_WRITE):
            raise CheckpointError(
                f"cannot write checkpoint {self.dir / tag}: no space left on the device (or quota exceeded); {kept}. "
                f"Keeping checkpoint.keep={self.keep} checkpoints needs room for {self.keep + 1}") from None
        raise CheckpointError(f"cannot write checkpoint {self.dir / tag}: {failures[0]}; {kept}") from None

    def restore(self) -> str | None:
        """Restore the engine and every component from `latest` after checking the meta; None if there is none.

        A checkpoint of another layout (world size, ZeRO stage, precision) is loaded through its universal copy,
        converted first where there is none (collective: every rank calls `restore`)."""
        tag = self.latest_tag()
        if tag is None:
            return None
        saved = self.meta(tag)
        for key, value in self.expect.items():
            if key in CHECKED and saved.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {self.dir / tag} was written with {key}={saved.get(key)!r}, this run has "
                    f"{key}={value!r}; resume with the same setting or start a new run dir")
        changed = layout_changes(saved, self.expect)
        if changed:
            client_state = self._restore_universal(tag, saved, changed)
        else:
            _, client_state = self.engine.load_checkpoint(
                str(self.dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if client_state is None:
            raise CheckpointError(f"DeepSpeed could not load {self.dir / tag}")
        missing = [name for name in self.states if name not in client_state]
        if missing:
            raise CheckpointError(f"checkpoint {self.dir / tag} holds no {', '.join(missing)} state; resume with the "
                                  "settings it was written with or start a new run dir")
        for name, component in self.states.items():
            component.load_state_dict(client_state[name])
        self.run_id = saved.get("run_id")  # None: written before runs had ids, and so are the resumed run's
        return tag

    def _restore_universal(self, tag: str, saved: Mapping[str, Any], changed: list[str]) -> dict[str, Any]:
        from pretrain.components.universal.load import (
            restore,  # imports DeepSpeed: only where a checkpoint is converted
        )

        folder = self.dir / tag
        ours = {k: self.expect.get(k) for k in LAYOUT if k in self.expect}
        written, here = describe(saved), describe(ours)
        if self.rank == 0:
            copy = universal_dir(folder)
            log.info("checkpoint %s was written with %s; this run has %s: loading it through its universal copy "
                     "%s (%s)", tag, written, here, copy.name, "reused" if copy.is_dir() else "converting it now")
        try:
            client_state = restore(self.engine, folder, self.rank)
        except ConversionError as err:
            raise CheckpointError(
                f"cannot resume checkpoint {folder} (written with {written}) with {here} ({', '.join(changed)} "
                f"differ): {err}; resume with {written} or start a new run dir") from None
        return client_state

    def _prune(self, keep_tag: str) -> None:
        """Remove incomplete folders and all but the newest `keep` complete checkpoints of this run (`run_id`),
        each with its universal copy; and what a killed conversion left. Another run's checkpoints stay."""
        tags = sorted(p.name for p in self.dir.glob("step-*") if p.is_dir() and TAG.fullmatch(p.name))
        complete = [t for t in tags if (self.dir / t / META).is_file()]
        ours = [t for t in complete if self.meta(t).get("run_id") == self.run_id]
        doomed = [t for t in tags if t not in complete and t != keep_tag] + ours[: -self.keep]
        for tag in doomed:
            shutil.rmtree(self.dir / tag, ignore_errors=True)
        kept = set(complete) - set(doomed)
        for path in self.dir.glob("step-*"):
            derived = path.name.endswith(UNIVERSAL_SUFFIX) and path.name[: -len(UNIVERSAL_SUFFIX)] not in kept
            if path.is_dir() and (derived or path.name.endswith(PARTIAL_SUFFIX)):
                shutil.rmtree(path, ignore_errors=True)
            elif FAILED_SUFFIX in path.name and path.is_file():
                path.unlink(missing_ok=True)


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
