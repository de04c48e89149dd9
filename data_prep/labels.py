"""Parsers for the small text files that name classes and labels.

Class lists (``--classes``), ImageNet synset lists (``--synsets``), the devkit's validation ground truth, the
``ImageId,PredictionString`` validation CSV, and ``path<TAB>label`` list files. Every problem is a
one-line :class:`DataPrepError` naming the file (and the line where there is one).
"""

from __future__ import annotations

import os

from data_prep.errors import DataPrepError


def read_lines(path: str, what: str) -> list[str]:
    """The lines of a UTF-8 text file (without line ends); ``what`` names the file in errors."""
    if not os.path.isfile(path):
        raise DataPrepError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except UnicodeDecodeError:
        raise DataPrepError(f"{what} {path} is not UTF-8 text") from None
    except OSError as e:
        raise DataPrepError(f"cannot read {what} {path}: {e.strerror}") from None


def read_names(path: str, what: str) -> list[str]:
    """One name per non-empty line; the first whitespace-separated field is the name.

    So plain lists and ``wnid description`` lines (``LOC_synset_mapping.txt``) both work; ``#`` starts a
    comment.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path, what), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        name = fields[0]
        if name in seen:
            raise DataPrepError(f"{what} {path}: '{name}' is listed twice (lines {seen[name]} and {lineno})")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DataPrepError(f"{what} {path} holds no names")
    return names


def is_val_csv(path: str) -> bool:
    """True if a labels file is the ``ImageId,PredictionString`` CSV (else: the devkit ground truth)."""
    for line in read_lines(path, "labels file"):
        if line.strip():
            return "," in line
    raise DataPrepError(f"labels file {path} is empty")


def read_ground_truth(path: str, num_synsets: int) -> list[int]:
    """The devkit's ground truth: one 1-based ILSVRC id per line, returned 0-based and range-checked."""
    ids: list[int] = []
    for lineno, line in enumerate(read_lines(path, "labels file"), 1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or not 1 <= int(text) <= num_synsets:
            raise DataPrepError(
                f"labels file {path} line {lineno}: '{text}' is not an id in 1..{num_synsets} (--synsets)"
            )
        ids.append(int(text) - 1)
    return ids


def read_val_csv(path: str) -> dict[str, str]:
    """``ImageId,PredictionString`` rows -> {image id: wnid}; the wnid is PredictionString's first token."""
    labels: dict[str, str] = {}
    for lineno, line in enumerate(read_lines(path, "labels file"), 1):
        if not line.strip() or (lineno == 1 and line.startswith("ImageId")):
            continue
        image_id, _, prediction = line.partition(",")
        tokens = prediction.split()
        if not image_id.strip() or not tokens:
            raise DataPrepError(
                f"labels file {path} line {lineno}: expected 'ImageId,wnid ...', got '{line}'"
            )
        labels[image_id.strip()] = tokens[0]
    if not labels:
        raise DataPrepError(f"labels file {path} holds no rows")
    return labels


def read_list_file(path: str) -> list[tuple[int, str, str]]:
    """A list file's entries as (line number, path, label).

    ``path<TAB>label`` if the first entry holds a tab, else ``path,label`` (split at the last comma, so
    paths may hold commas). Blank lines and ``#`` comments are skipped; a first line ``path<sep>label``
    is a header.
    """
    rows: list[tuple[int, str, str]] = []
    sep = None
    for lineno, line in enumerate(read_lines(path, "list file"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if sep is None:
            sep = "\t" if "\t" in line else ","
        item, found, label = line.rpartition(sep)
        item, label = item.strip(), label.strip()
        if not found or not item or not label:
            raise DataPrepError(f"list file {path} line {lineno}: expected 'path<TAB>label' or 'path,label'")
        if not rows and (item.lower(), label.lower()) == ("path", "label"):
            continue
        rows.append((lineno, item, label))
    if not rows:
        raise DataPrepError(f"list file {path} holds no entries")
    return rows
