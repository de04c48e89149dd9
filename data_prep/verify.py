"""Checking a finished build against its manifest, shard by shard, sample by sample.

Every shard is read once: its bytes are hashed as the tar is parsed. Checked: the shard exists, its size,
sha256 and sample count match the manifest, every sample has one image, a ``cls`` within range and a ``json``,
keys are unique across shards, per-class totals match, each shard's index (``SHARD.tar.idx``) lists its samples'
offsets, keys and labels; with ``decode`` every image is decoded as well.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from data_prep.encode import BadImage, encode_image
from data_prep.errors import DataPrepError
from data_prep.index import INDEX_SUFFIX, index_path, parse_index, scan_shard
from data_prep.manifest import read_manifest

_META = ("cls", "json")


@dataclass
class VerifyResult:
    """What :func:`verify` found; ``ok`` is True when ``errors`` is empty."""

    out: str
    classes: list[str]
    num_shards: int = 0
    num_samples: int = 0
    num_bytes: int = 0
    class_counts: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_errors: int = 20) -> str:
        """A few lines: totals, per-class min/max, then the problems found (at most ``max_errors``)."""
        lines = [
            f"{self.out}: {self.num_samples} samples, {len(self.classes)} classes, {self.num_shards} shards, "
            f"{self.num_bytes / 1e6:.1f} MB"
        ]
        if self.class_counts:
            low = min(range(len(self.class_counts)), key=self.class_counts.__getitem__)
            high = max(range(len(self.class_counts)), key=self.class_counts.__getitem__)
            lines.append(
                f"samples per class: min {self.class_counts[low]} ('{self.classes[low]}'), "
                f"max {self.class_counts[high]} ('{self.classes[high]}')"
            )
        if self.ok:
            lines.append("OK")
        else:
            lines.append(f"{len(self.errors)} problem(s):")
            lines += [f"  {e}" for e in self.errors[:max_errors]]
            if len(self.errors) > max_errors:
                lines.append(f"  ... and {len(self.errors) - max_errors} more")
        return "\n".join(lines)


class _HashingReader:
    """A read-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f: io.BufferedReader):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for consecutive members sharing a key, as webdataset groups them."""
    key, members = None, {}
    for info in tar:
        if not info.isfile():
            continue
        folder, _, base = info.name.rpartition("/")
        stem, _, ext = base.partition(".")
        data = tar.extractfile(info).read()
        name = f"{folder}/{stem}" if folder else stem
        if name != key and key is not None:
            yield key, members
            members = {}
        key = name
        members[ext] = data
    if key is not None:
        yield key, members


def _check_sample(members: dict[str, bytes], num_classes: int, decode: bool) -> tuple[int | None, str]:
    """(class index or None, problem or '') for one sample."""
    images = [ext for ext in members if ext not in _META]
    missing = [ext for ext in _META if ext not in members]
    if missing or len(images) != 1:
        return None, f"has members {sorted(members)}: needs one image, cls and json"
    text = members["cls"].decode("ascii", "replace")
    if not text.isdigit() or int(text) >= num_classes:
        return None, f"cls '{text}' is not in 0..{num_classes - 1}"
    if decode:
        try:
            encode_image(members[images[0]])
        except BadImage as e:
            return int(text), f"{images[0]} does not decode: {e}"
    return int(text), ""


def _check_shard(path: str, entry: dict, result: VerifyResult, seen: set[str], decode: bool) -> None:
    name = entry["name"]
    count = 0
    with open(path, "rb") as f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for key, members in _samples(tar):
                    count += 1
                    if key in seen:
                        result.errors.append(f"{name}: sample {key}: key already seen in an earlier sample")
                    seen.add(key)
                    cls, problem = _check_sample(members, len(result.classes), decode)
                    if cls is not None:
                        result.class_counts[cls] += 1
                    if problem:
                        result.errors.append(f"{name}: sample {key}: {problem}")
        except tarfile.TarError as e:
            result.errors.append(f"{name}: not a readable tar after {count} samples ({e})")
        while reader.read(1 << 22):
            pass
    result.num_samples += count
    result.num_bytes += reader.size
    if reader.size != entry["bytes"] or reader.sha.hexdigest() != entry["sha256"]:
        result.errors.append(
            f"{name}: sha256 differs from the manifest ({reader.size} bytes, manifest says {entry['bytes']})"
        )
    if count != entry["num_samples"]:
        result.errors.append(f"{name}: {count} samples, manifest says {entry['num_samples']}")


def _check_index(out: str, path: str, entry: dict, result: VerifyResult) -> None:
    name, fix = entry["name"] + INDEX_SUFFIX, f"write it with `python -m data_prep index {out}`"
    try:
        with open(index_path(path), encoding="utf-8") as f:
            size, entries = parse_index(f.read(), name)
    except FileNotFoundError:
        result.errors.append(f"{name}: missing ({fix})")
        return
    except (OSError, UnicodeDecodeError, ValueError) as e:
        result.errors.append(f"{e} ({fix})")
        return
    try:
        actual = scan_shard(path)
    except DataPrepError:
        return  # the shard itself is reported unreadable
    if size != entry["bytes"] or entries != actual:
        result.errors.append(f"{name}: does not match its shard ({fix})")


def verify(out: str, decode: bool = False) -> VerifyResult:
    """Check ``out`` against its manifest; a DataPrepError only if there is no readable manifest."""
    manifest = read_manifest(out)
    result = VerifyResult(out, list(manifest["classes"]), class_counts=[0] * len(manifest["classes"]))
    seen: set[str] = set()
    for entry in manifest["shards"]:
        path = os.path.join(out, entry["name"])
        if not os.path.isfile(path):
            result.errors.append(f"{entry['name']}: missing")
            continue
        result.num_shards += 1
        _check_shard(path, entry, result, seen, decode)
        _check_index(out, path, entry, result)
    if result.num_samples != manifest["num_samples"]:
        result.errors.append(f"{result.num_samples} samples in all, manifest says {manifest['num_samples']}")
    if result.class_counts != manifest["class_counts"]:
        result.errors.append("samples per class differ from the manifest's class_counts")
    return result
