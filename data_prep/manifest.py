"""``OUT/manifest.json``: what a finished build holds. Written last, atomically: present means complete.

Keys: format_version, layout, options (creation options), num_samples, num_classes, classes (index ->
name), shards [{name, num_samples, bytes, sha256}] (names relative to the manifest's folder), skipped
[{path, reason}], class_counts (per class index). The trainer relies on num_samples, num_classes,
classes, shards[i].name and shards[i].num_samples, and on
each shard's index beside it (``data_prep/index.py``). :func:`format_problem` is the one check of the format, for
:func:`read_manifest` and for the trainer's reader (``pretrain.data.load_manifest``).
"""

from __future__ import annotations

import json
import os
import re

from data_prep.errors import DataPrepError
from fileio.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+-\d{6}\.tar$")
# The keys every reader may rely on, beside format_version.
REQUIRED_KEYS = ("num_samples", "num_classes", "classes", "shards", "class_counts")


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
    """Write ``OUT/manifest.json`` atomically (the last file of a build)."""
    atomic_write_json(os.path.join(out, MANIFEST_NAME), manifest)


def format_problem(manifest: object) -> str | None:
    """Why a loaded manifest is not in this format (to follow its file name in an error), or None if it is."""
    if not isinstance(manifest, dict):
        return "does not hold a JSON object"
    if "format_version" not in manifest:
        return f"has no format_version (format_version {FORMAT_VERSION} is supported): build it with data_prep"
    version = manifest["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        return f"has format_version {version!r}, but only format_version {FORMAT_VERSION} is supported"
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    return None


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
    problem = format_problem(manifest)
    if problem is not None:
        raise DataPrepError(f"{path} {problem}")
    return manifest
