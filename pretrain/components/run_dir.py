"""What a run dir holds, and the rule that keeps a run from being destroyed by the next one started in its dir.

A run dir holds a run when one of `RUN_ENTRIES` is there (a non-empty `checkpoints/` or `tensorboard/`, the final
weights, `metrics.json`, the resolved `config.yaml`). A training entry point started there either

- resumes it (`--resume auto`, from `checkpoints/latest`),
- or moves it aside (`--overwrite`: the entries go to `replaced-<UTC time>/` in the run dir, nothing is deleted),
- or is refused before any rank does any work: one line naming the dir and the ways out, exit status 2.

`--resume auto` in a dir with no checkpoint starts a new run (what a killed first attempt left, its `metrics.json`
too, is made again), unless the dir holds what a new run would not make again: final weights, complete checkpoints
without a `latest` pointer, a `metrics.json` without the `config.yaml` every training attempt writes first
(`launch/evaluate.py`'s). Anything else in the dir (`data/`, the subset cache; `eval/`, `launch/evaluate.py`'s
results; earlier `replaced-*/`) is no part of the run.

`claim` is called on every rank before the process group starts: every rank decides alike from the (shared) file
system, and no rank writes before every rank has decided (the process group's start waits for all of them).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pretrain.components.checkpoint import FINAL, FINAL_EMA, META, POINTER

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
RUN_ENTRIES = (CHECKPOINTS, "tensorboard", "config.yaml", METRICS, FINAL, FINAL_EMA)
REPLACED = "replaced-"


class RunDirError(ValueError):
    """The run dir holds a run that this start would destroy (the message names the ways out)."""


def run_entries(run_dir: Path) -> list[str]:
    """The entries of a run present in `run_dir` (folders only when not empty)."""
    present = []
    for name in RUN_ENTRIES:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            present.append(name)
    return present


def complete_checkpoints(run_dir: Path) -> list[str]:
    """The tags of the complete checkpoints (their meta written last) under `run_dir/checkpoints`."""
    folder = run_dir / CHECKPOINTS
    return sorted(p.parent.name for p in folder.glob(f"step-*/{META}")) if folder.is_dir() else []


def claim(run_dir: Path, *, resume: bool, overwrite: bool, rank: int) -> None:
    """Decide what this start does with `run_dir` (see the module's docstring); raise RunDirError to refuse. With
    `overwrite`, rank 0 moves the old run aside. Call on every rank before the process group starts."""
    if resume and overwrite:
        raise RunDirError("--resume auto continues the run in the run dir, --overwrite moves it aside: pass one")
    entries = run_entries(run_dir)
    checkpoints = run_dir / CHECKPOINTS
    if resume and (checkpoints / POINTER).is_file():
        return  # the Checkpointer resumes it
    if entries and overwrite:
        if rank == 0:
            aside = move_aside(run_dir, entries)
            log.warning("--overwrite: the run in %s (%s) was moved to %s", run_dir, ", ".join(entries), aside)
        return
    if not entries or (resume and not lasting(run_dir, entries)):
        if resume and rank == 0:
            log.info("no checkpoint in %s: starting a new run", checkpoints)
        return
    what = ", ".join(complete_checkpoints(run_dir)[-1:] + [e for e in entries if e != CHECKPOINTS])
    if resume:
        raise RunDirError(f"{run_dir} holds a run ({what}) but no {checkpoints / POINTER} to resume it from; start "
                          "a new run with another --run-dir, or --overwrite (moves the old run aside)")
    raise RunDirError(f"{run_dir} already holds a run ({what}); continue it with --resume auto, or start a new one "
                      "with another --run-dir (or --overwrite, which moves the old run aside)")


def lasting(run_dir: Path, entries: list[str]) -> bool:
    """Whether `run_dir` holds what a new run would overwrite and not make again: final weights, a complete
    checkpoint, a `metrics.json` of no training attempt (one writes `config.yaml` before any evaluation)."""
    evaluate_results = METRICS in entries and "config.yaml" not in entries
    return bool({FINAL, FINAL_EMA} & set(entries)) or evaluate_results or bool(complete_checkpoints(run_dir))


def move_aside(run_dir: Path, entries: list[str]) -> Path:
    """Move `entries` of `run_dir` into a new `replaced-<UTC time>/` in it (renames: nothing is copied or deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside, n = run_dir / f"{REPLACED}{stamp}", 1
    while aside.exists():
        n += 1
        aside = run_dir / f"{REPLACED}{stamp}-{n}"
    aside.mkdir()
    for name in entries:
        os.replace(run_dir / name, aside / name)
    return aside


def check_eval_dir(run_dir: Path) -> None:
    """`launch/evaluate.py` writes its own `metrics.json`: never into a training run's dir."""
    training = [e for e in run_entries(run_dir) if e != METRICS]
    if training:
        raise RunDirError(f"{run_dir} holds a training run ({', '.join(training)}); evaluation results go to a dir of "
                          "their own: pass another --run-dir (default runs/<config name>/eval)")
