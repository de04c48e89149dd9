"""The shard manifest written by data_prep: loading, validation, shard URLs.

The format (its version and required keys) is data_prep's (``data_prep.manifest.format_problem``); this reader
adds the types, the counts and the shards' URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from data_prep.manifest import MANIFEST_NAME, format_problem


class DataError(ValueError):
    """A problem with the data a user pointed us at (missing, unreadable, inconsistent); one line."""


@dataclass(frozen=True)
class Shard:
    """One tar shard: `url` is what webdataset's gopen opens (a local path, a URL or a `pipe:` command)."""

    name: str
    url: str
    num_samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A sharded dataset: its shards in manifest order and its classes.

    A subset (pretrain/data/subset.py) keeps the shards and adds `selections`: per shard, the sorted in-shard
    indices of the samples it keeps; `num_samples` and `shard_sizes` then count kept samples only, and `subset`
    names the selection (it is part of the data state, so a resume on another subset is refused).
    """

    path: str
    num_samples: int
    num_classes: int
    classes: tuple[str, ...]
    shards: tuple[Shard, ...]
    selections: tuple[tuple[int, ...], ...] | None = None
    subset: str = "all"

    @property
    def shard_sizes(self) -> list[int]:
        """Samples read from each shard (all of them, or the kept ones of a subset), in manifest order."""
        if self.selections is not None:
            return [len(sel) for sel in self.selections]
        return [s.num_samples for s in self.shards]

    @property
    def digest(self) -> str:
        """A short digest of the shard list (names, sample counts, bytes, sha256s, in order): what a data position
        records of the shards, so that a resume on other shards is refused."""
        rows = [[s.name, s.num_samples, s.bytes, s.sha256] for s in self.shards]
        return hashlib.blake2b(json.dumps(rows, separators=(",", ":")).encode(), digest_size=8).hexdigest()


def is_remote(name: str) -> bool:
    """True for URLs and `pipe:` commands (kept as they are), False for plain paths."""
    scheme = urlparse(name).scheme
    return len(scheme) > 1 and scheme != "file"


def _field(doc: dict, key: str, kind: type, where: str):
    if key not in doc:
        raise DataError(f"{where} lacks the key {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _shard(entry: object, root: str, where: str) -> Shard:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: every shard entry must be an object")
    name = _field(entry, "name", str, where)
    url = (
        name
        if is_remote(name)
        else os.path.join(root, urlparse(name).path if name.startswith("file:") else name)
    )
    return Shard(
        name=name,
        url=url,
        num_samples=_field(entry, "num_samples", int, where),
        bytes=_field(entry, "bytes", int, where),
        sha256=_field(entry, "sha256", str, where),
    )


def load_manifest(path: str) -> Manifest:
    """Load a manifest from its folder or its manifest.json, in data_prep's format; local shards must exist."""
    file = os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DataError(f"manifest not found: {file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"manifest {file} is unreadable: {exc}") from None
    problem = format_problem(doc)
    if problem is not None:
        raise DataError(f"manifest {file} {problem}")
    root = os.path.dirname(os.path.abspath(file))
    entries = _field(doc, "shards", list, f"manifest {file}")
    shards = tuple(_shard(e, root, f"manifest {file}") for e in entries)
    classes = tuple(str(c) for c in _field(doc, "classes", list, f"manifest {file}"))
    manifest = Manifest(
        path=file,
        num_samples=_field(doc, "num_samples", int, f"manifest {file}"),
        num_classes=_field(doc, "num_classes", int, f"manifest {file}"),
        classes=classes,
        shards=shards,
    )
    _check(manifest)
    return manifest


def _check(m: Manifest) -> None:
    if not m.shards:
        raise DataError(f"manifest {m.path} lists no shards")
    if sum(m.shard_sizes) != m.num_samples:
        raise DataError(
            f"manifest {m.path}: num_samples is {m.num_samples} but its shards hold {sum(m.shard_sizes)}"
        )
    if m.num_classes < 1 or len(m.classes) not in (0, m.num_classes):
        raise DataError(
            f"manifest {m.path}: num_classes {m.num_classes} does not match {len(m.classes)} classes"
        )
    for shard in m.shards:
        if not is_remote(shard.name) and not os.path.isfile(shard.url):
            raise DataError(f"shard not found: {shard.url} (listed in {m.path})")


def check_head_classes(manifest: Manifest, where: str, num_classes: int, exact: bool) -> None:
    """The model's head must have room for every class of the data at `where`; `exact` (fine-tuning): as many."""
    have = manifest.num_classes
    if exact and have != num_classes:
        raise DataError(f"{where} has {have} classes but the model's head has {num_classes}; "
                        f"set model.num_classes={have}")
    if have > num_classes:
        raise DataError(f"`model.num_classes`: {num_classes} is fewer than the {have} classes of {where}")
