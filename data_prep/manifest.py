"""``OUT/manifest.json``: what a finished build holds. Written last, atomically: present means complete.

Keys: format_version, layout, options (creation options), num_samples, num_classes, classes (index ->
name), shards [{name, num_samples, bytes, sha256}] (names relative to the manifest's folder), skipped
[{path, reason}], class_counts (per class index). The trainer relies on num_samples, num_classes,
classes, shards[i].name and shards[i].num_samples.
"""

from __future__ import annotations

import json
import os
import re

from data_prep.atomic import write_json_atomic
from data_prep.errors import DataPrepError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+-\d{6}\.tar$")
_REQUIRED = ("num_samples", "num_classes", "classes", "shards", "class_counts")


def shard_name(prefix: str, index: int) -> str:
    """The final name of shard ``index``: ``{prefix}-{index:06d}.tar``."""
    return f"{prefix}-{index:06d}.tar"


def make_manifest(
    layout: str,
    options: dict,
    classes: list[str],
    shards: list[dict],
    skipped: list[dict],
    class_counts: list[int],
) -> dict:
    """The manifest object (deterministic: no times, no host names, no worker count)."""
    return {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "options": options,
        "num_samples": sum(s["num_samples"] for s in shards),
        "num_classes": len(classes),
        "classes": classes,
        "shards": shards,
        "skipped": skipped,
        "class_counts": class_counts,
    }


def write_manifest(out: str, manifest: dict) -> None:
    write_json_atomic(os.path.join(out, MANIFEST_NAME), manifest)


def read_manifest(out: str) -> dict:
    """Load and sanity-check ``OUT/manifest.json``; a one-line DataPrepError if absent or malformed."""
    path = os.path.join(out, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise DataPrepError(f"no {MANIFEST_NAME} in {out} (not a finished build)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DataPrepError(f"cannot read {path}: {e}") from None
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise DataPrepError(f"{path} lacks the key(s) {', '.join(missing)}")
    return manifest
