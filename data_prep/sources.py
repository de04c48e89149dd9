"""Source layouts -> the list of samples to write: (path relative to SRC, class index), plus the class names.

Layouts: ``folders`` (SRC/<class>/<image>), ``imagenet-val`` (flat folder + labels file) and ``list`` (a
``path<TAB>label`` file). The ``digits`` layout lives in :mod:`data_prep.digits`. Listings are sorted, so a
source always yields the same list in the same order. Hidden files and folders (a leading '.') are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from data_prep import labels
from data_prep.errors import DataPrepError


class Reader(Protocol):
    """Turns a sample's reference (its ``path`` in the manifest) into the raw image bytes."""

    def read(self, ref: str) -> bytes: ...


@dataclass(frozen=True)
class FileReader:
    """Reads ``ref`` relative to ``root``; picklable, so workers can use it."""

    root: str

    def read(self, ref: str) -> bytes:
        with open(os.path.join(self.root, ref), "rb") as f:
            return f.read()


@dataclass(frozen=True)
class Source:
    """What a layout yields: class names (index -> name) and samples (ref, class index) in a fixed order."""

    classes: list[str]
    items: list[tuple[str, int]]
    reader: Reader


def _require_dir(root: str) -> None:
    if not os.path.isdir(root):
        raise DataPrepError(f"source folder not found: {root}")


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _files_under(root: str, folder: str) -> list[str]:
    """Every visible file below root/folder, as sorted '/'-joined paths relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
        dirnames[:] = _visible(dirnames)
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        found += [f"{rel}/{name}" for name in _visible(filenames)]
    return sorted(found)


def _index_of(classes: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(classes)}


def folders_source(root: str, classes_file: str | None = None) -> Source:
    """``root/<class>/<image>``, sub-folders of a class folder included; files directly in root are ignored.

    Class index: position in ``classes_file`` if given, else in the sorted class folder names.
    """
    _require_dir(root)
    entries = _visible(os.listdir(root))
    class_dirs = [n for n in entries if os.path.isdir(os.path.join(root, n))]
    if not class_dirs:
        hint = "; for a flat folder of validation images use --layout imagenet-val" if entries else ""
        raise DataPrepError(f"{root} holds no class folders (expected {root}/<class>/<image>){hint}")
    classes = labels.read_names(classes_file, "classes file") if classes_file else class_dirs
    index = _index_of(classes)
    unknown = [c for c in class_dirs if c not in index]
    if unknown:
        raise DataPrepError(
            f"class folder '{unknown[0]}' is not in classes file {classes_file} ({len(unknown)} such folders)"
        )
    items = [(path, index[c]) for c in class_dirs for path in _files_under(root, c)]
    if not items:
        raise DataPrepError(f"no files found in the class folders of {root}")
    return Source(classes=classes, items=items, reader=FileReader(root))


def _val_wnids(
    root: str, files: list[str], labels_file: str, synsets_file: str | None
) -> tuple[list[str], list[str]]:
    """(wnid of each file, the synset list or the sorted wnids seen) from either labels format."""
    if labels.is_val_csv(labels_file):
        by_id = labels.read_val_csv(labels_file)
        stems = [os.path.splitext(f)[0] for f in files]
        missing = [f for f, s in zip(files, stems, strict=True) if s not in by_id]
        if missing:
            raise DataPrepError(
                f"labels file {labels_file} has no row for {missing[0]} ({len(missing)} such files)"
            )
        extra = sorted(set(by_id) - set(stems))
        if extra:
            raise DataPrepError(
                f"labels file {labels_file} names {len(extra)} images not in {root} (e.g. {extra[0]})"
            )
        wnids = [by_id[s] for s in stems]
        return wnids, sorted(set(wnids))
    if synsets_file is None:
        raise DataPrepError(
            f"labels file {labels_file} holds ILSVRC ids; give the synset list they index with --synsets FILE"
        )
    synsets = labels.read_names(synsets_file, "synsets file")
    ids = labels.read_ground_truth(labels_file, len(synsets))
    if len(ids) != len(files):
        raise DataPrepError(
            f"labels file {labels_file} has {len(ids)} labels but {root} holds {len(files)} files "
            "(it needs one per file, in sorted filename order)"
        )
    return [synsets[i] for i in ids], sorted(synsets)


def imagenet_val_source(
    root: str, labels_file: str | None, synsets_file: str | None = None, classes_file: str | None = None
) -> Source:
    """A flat folder of validation images labelled by the devkit ground truth + synsets, or by the CSV.

    Class index: position in ``classes_file`` if given, else in the sorted wnids (of the synset list, or
    of the CSV). A SRC that holds class folders is refused with a pointer to ``--layout folders``.
    """
    _require_dir(root)
    if labels_file is None:
        raise DataPrepError("--layout imagenet-val needs --labels FILE (devkit ground truth or ImageId CSV)")
    entries = _visible(os.listdir(root))
    files = [n for n in entries if os.path.isfile(os.path.join(root, n))]
    if not files:
        dirs = [n for n in entries if os.path.isdir(os.path.join(root, n))]
        if dirs:
            raise DataPrepError(
                f"{root} holds class folders ({dirs[0]}/...), not a flat folder of images: use "
                "--layout folders (with --classes to share the train class index)"
            )
        raise DataPrepError(f"no files found in {root}")
    wnids, default_classes = _val_wnids(root, files, labels_file, synsets_file)
    classes = labels.read_names(classes_file, "classes file") if classes_file else default_classes
    index = _index_of(classes)
    for name, wnid in zip(files, wnids, strict=True):
        if wnid not in index:
            raise DataPrepError(f"class '{wnid}' (label of {name}) is not in classes file {classes_file}")
    return Source(
        classes=classes,
        items=[(f, index[w]) for f, w in zip(files, wnids, strict=True)],
        reader=FileReader(root),
    )


def _list_classes(rows: list[tuple[int, str, str]], classes_file: str | None) -> list[str]:
    if classes_file:
        return labels.read_names(classes_file, "classes file")
    if all(label.isdigit() for _, _, label in rows):
        return [str(i) for i in range(1 + max(int(label) for _, _, label in rows))]
    return sorted({label for _, _, label in rows})


def list_source(root: str, list_file: str | None, classes_file: str | None = None) -> Source:
    """The entries of a list file, paths relative to ``root``, in file order.

    Labels are class names or integer indices. Classes: ``classes_file`` if given; else, when every label
    is an integer, '0'..'max'; else the sorted label names. A label that names no class is an error
    naming its line.
    """
    _require_dir(root)
    if list_file is None:
        raise DataPrepError("--layout list needs --list FILE (lines 'path<TAB>label')")
    rows = labels.read_list_file(list_file)
    classes = _list_classes(rows, classes_file)
    index = _index_of(classes)
    items = []
    for lineno, path, label in rows:
        if label in index:
            items.append((path, index[label]))
        elif label.isdigit() and int(label) < len(classes):
            items.append((path, int(label)))
        else:
            raise DataPrepError(f"list file {list_file} line {lineno}: unknown class '{label}'")
    return Source(classes=classes, items=items, reader=FileReader(root))
