"""The checks that need no process group, run by every entry point before it starts one: a mistake is one line
naming its key within seconds of the command, not after the ranks, the data loaders and the evaluators are up.

- every shard set the run reads (`data.train`, each evaluator's `data` / `train` / `val`) has a readable manifest;
  the error names the key and, for a folder of images, the data_prep command that makes shards of it;
- the batch arithmetic and the loader workers against the world size (`check_against_world`, `check_workers`);
- the head against the training data's classes (fewer: an error; many more in pretraining: one warning line);
- few-shot shot counts against the manifest's per-class counts of the shots' shard set.

A stage adds its own (fine-tuning: the init checkpoint's format and fit, `finetune.stage.check_init`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.config.batch import check_against_world
from pretrain.config.errors import ConfigError
from pretrain.config.schema import EvalSpec, PretrainConfig
from pretrain.config.startup import check_workers

if TYPE_CHECKING:
    from pretrain.data.manifest import Manifest

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HEAD_WARNING_RATIO = 2  # a pretraining head with more than this many times the data's classes is warned about
KeyOf = Callable[[str, str], str]  # (evaluator name, field) -> the config key that sets it


def shards(key: str, path: str) -> Manifest:
    """The manifest of the shard set `key` names; a ConfigError naming `key` (and what to do) when there is none."""
    from pretrain.data import DataError, load_manifest

    folder = Path(path)
    if not folder.exists():
        raise ConfigError(f"`{key}`: {path} does not exist (a shard folder made by python -m data_prep build)")
    if folder.is_dir() and not (folder / "manifest.json").is_file():
        raise ConfigError(f"`{key}`: no manifest.json in {path}{_what_it_holds(folder)}")
    try:
        return load_manifest(path)
    except DataError as err:
        raise ConfigError(f"`{key}`: {err}") from None


def _what_it_holds(folder: Path) -> str:
    """A hint for a folder without a manifest: images or class folders of images call for data_prep build."""
    entries = sorted(folder.iterdir())[:200]
    images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries)
    class_dirs = any(p.is_dir() and any(c.suffix.lower() in IMAGE_SUFFIXES for c in sorted(p.iterdir())[:50])
                     for p in entries[:20])
    if class_dirs:
        return (f" (a folder of images? build shards first: python -m data_prep build --layout folders --source "
                f"{folder} --out {folder}-shards)")
    if images:
        return (f" (a flat folder of images? shards need labels: one sub-folder per class, then python -m data_prep "
                f"build --layout folders --source {folder} --out {folder}-shards; or --layout list --list LABELS)")
    return " (a shard folder made by python -m data_prep build)"


def class_counts(manifest: Manifest) -> list[int] | None:
    """The manifest's samples per class (data_prep writes them), or None when it has none."""
    counts = json.loads(Path(manifest.path).read_text()).get("class_counts")
    return counts if isinstance(counts, list) and all(isinstance(c, int) for c in counts) else None


def check_shots(key: str, shots: list[int], manifest: Manifest, where: str) -> None:
    """Every class of the shots' shard set has at least max(shots) samples (the few-shot probes draw that many)."""
    counts = class_counts(manifest)
    if not counts:
        return
    need = max(shots)
    poorest = min(range(len(counts)), key=counts.__getitem__)
    if counts[poorest] < need:
        name = manifest.classes[poorest] if poorest < len(manifest.classes) else ""
        label = f"class {poorest}" + (f" ({name!r})" if name and name != str(poorest) else "")
        raise ConfigError(f"`{key}`: {need}-shot needs {need} examples of every class; {label} has "
                          f"{counts[poorest]} in {where}; use shots of at most {counts[poorest]}")


def head_problem(num_classes: int, manifest: Manifest, where: str) -> str | None:
    """The warning for a pretraining head far wider than the data's classes (allowed, but almost always a mistake)."""
    have = manifest.num_classes
    if num_classes <= HEAD_WARNING_RATIO * have:
        return None
    return (f"`model.num_classes`: a {num_classes}-way head on the {have} classes of {where}: allowed, but "
            f"{num_classes - have} outputs never see a label; set model.num_classes={have} unless you mean it")


def evals_key(cfg: PretrainConfig, defaults: Mapping[str, str]) -> KeyOf:
    """Where an evaluator's field is set: `evals.NAME.FIELD`, or the stage's shorthand for its default evaluators."""

    def key(name: str, field: str) -> str:
        if name in cfg.evals:
            return f"evals.{name}.{field}"
        return defaults.get(f"{name}.{field}", f"evals.{name}.{field}")

    return key


def preflight(cfg: PretrainConfig, specs: Mapping[str, EvalSpec], world_size: int, exact_classes: bool,
              key_of: KeyOf | None = None, train: bool = True, rank: int = 0) -> None:
    """Run every check above that applies (`train`: the run trains on `data.train`; an evaluation does not);
    warnings are logged by rank 0 only."""
    from pretrain.data import check_head_classes

    key_of = key_of or evals_key(cfg, {})
    if train:
        manifest = shards("data.train", cfg.data.train)
        check_against_world(cfg, world_size)
        if cfg.data.subset_fraction == 1.0:
            check_workers(manifest, cfg, world_size)
        check_head_classes(manifest, cfg.data.train, cfg.model.num_classes, exact_classes)
        problem = None if exact_classes else head_problem(cfg.model.num_classes, manifest, cfg.data.train)
        if problem is not None and rank == 0:
            log.warning("%s", problem)
    for name, spec in specs.items():
        if spec.type == "classification":
            manifest = shards(key_of(name, "data"), spec.data)
            check_head_classes(manifest, spec.data, cfg.model.num_classes, exact_classes)
            continue
        shots = shards(key_of(name, "train"), spec.train)
        shards(key_of(name, "val"), spec.val)
        check_shots(key_of(name, "shots"), spec.shots, shots, f"{key_of(name, 'train')} ({spec.train})")
