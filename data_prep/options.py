"""Build options: one typed record, checked at once (one-line errors); the part the manifest records."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from data_prep.errors import DataPrepError

LAYOUTS = ("folders", "imagenet-val", "list", "digits")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Options that only some layouts use: (field, its flag, the layouts that use it).
_LAYOUT_ONLY = (
    ("classes_file", "--classes", ("folders", "imagenet-val", "list")),
    ("labels_file", "--labels", ("imagenet-val",)),
    ("synsets_file", "--synsets", ("imagenet-val",)),
    ("list_file", "--list", ("list",)),
)
_DIGITS_ONLY = ("split", "val_fraction", "image_size")
# Options that do not change what is written: left out of the manifest and of the resume check.
_RUN_ONLY = ("out", "workers", "overwrite", "resume")


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``python -m data_prep build`` takes; see ``--help`` for each option."""

    layout: str
    out: str
    source: str | None = None
    classes_file: str | None = None
    labels_file: str | None = None
    synsets_file: str | None = None
    list_file: str | None = None
    split: str = "train"
    val_fraction: float = 0.2
    image_size: int = 32
    resize_shorter: int | None = None
    quality: int = 90
    shard_max_samples: int = 10_000
    shard_max_bytes: int = 1_000_000_000
    workers: int = 1
    seed: int = 0
    prefix: str | None = None
    overwrite: bool = False
    resume: bool = False
    max_skipped_frac: float = 0.01

    def checked(self) -> BuildOptions:
        """These options with the default prefix filled in; a one-line DataPrepError for any bad value."""
        _check_ranges(self)
        if self.layout != "digits" and not self.source:
            raise DataPrepError(f"--layout {self.layout} needs --source SRC")
        for field, flag, layouts in _LAYOUT_ONLY:
            if getattr(self, field) is not None and self.layout not in layouts:
                raise DataPrepError(f"{flag} is only used with --layout {' or '.join(layouts)}")
        if self.overwrite and self.resume:
            raise DataPrepError("--overwrite and --resume exclude each other")
        prefix = self.prefix if self.prefix is not None else default_prefix(self)
        if not PREFIX_RE.match(prefix) or len(prefix) > 64:
            raise DataPrepError(
                f"--prefix '{prefix}' may only hold letters, digits, '_' and '-' (64 at most)"
            )
        return dataclasses.replace(self, prefix=prefix)

    def recorded(self) -> dict:
        """The creation options written to the manifest: what shapes the output, paths made absolute."""
        record = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _RUN_ONLY or (field.name in _DIGITS_ONLY and self.layout != "digits"):
                continue
            if field.name.endswith("_file") or field.name == "source":
                value = os.path.abspath(value) if value and self.layout != "digits" else None
            record[field.name] = value
        if self.resize_shorter is None:
            record["quality"] = None
        return record


def default_prefix(options: BuildOptions) -> str:
    """The split for digits, 'val' for imagenet-val, the list file's name for list, else 'train'."""
    if options.layout == "digits":
        return options.split
    if options.layout == "imagenet-val":
        return "val"
    if options.layout == "list" and options.list_file:
        stem = os.path.splitext(os.path.basename(options.list_file))[0]
        return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "train"
    return "train"


def _check_ranges(o: BuildOptions) -> None:
    checks = [
        (o.layout in LAYOUTS, f"--layout must be one of {', '.join(LAYOUTS)}, not '{o.layout}'"),
        (o.split in ("train", "val"), f"--split must be train or val, not '{o.split}'"),
        (0.0 < o.val_fraction < 1.0, f"--val-fraction must be in (0, 1), not {o.val_fraction}"),
        (o.image_size >= 8, f"--image-size must be at least 8, not {o.image_size}"),
        (
            o.resize_shorter is None or o.resize_shorter >= 1,
            f"--resize-shorter must be >= 1, not {o.resize_shorter}",
        ),
        (1 <= o.quality <= 100, f"--quality must be in 1..100, not {o.quality}"),
        (o.shard_max_samples >= 1, f"--shard-max-samples must be >= 1, not {o.shard_max_samples}"),
        (o.shard_max_bytes >= 1, f"--shard-max-bytes must be >= 1, not {o.shard_max_bytes}"),
        (o.workers >= 1, f"--workers must be >= 1, not {o.workers}"),
        (0.0 <= o.max_skipped_frac <= 1.0, f"--max-skipped-frac must be in [0, 1], not {o.max_skipped_frac}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DataPrepError(message)
