"""ImageNet-ReaL end to end: real photos named like ImageNet's validation files -> `python -m data_prep build`
(several shards, renumbered keys) -> build_eval_loader -> EvalAccumulator with a real.json, exact numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pretrain.data import build_eval_loader, eval_transform, load_manifest
from pretrain.evaluators.accuracy import EvalAccumulator, load_real_labels
from tests.helpers_data_prep import encoded, photos, write_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 16
CLASSES = ["n01484850", "n01440764", "n01491361", "n01443537"]  # the class index: deliberately not sorted
NUMBER = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")


def file_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def label(n: int) -> int:
    """The class index of image n (1-based): 2, 3, 0, 1, 2, 3, ..."""
    return (n + 1) % len(CLASSES)


def prediction(n: int) -> int:
    """The model's top-1 class for image n: right unless n is a multiple of 3 (3, 6, 9, 12, 15: 11 of 16)."""
    return label(n) if n % 3 else (label(n) + 1) % len(CLASSES)


def images() -> list[bytes]:
    """16 distinct JPEGs: each of the 8 real photos, and its mirror image cropped by 8 px."""
    out = []
    for array in photos().values():
        out += [encoded(array), encoded(np.ascontiguousarray(array[8:, ::-1]))]
    return out


def build(src: str, out: str, layout: str, *extra: str) -> None:
    args = ["build", "--layout", layout, "--source", src, "--out", out, "--shard-max-samples", "5", *extra]
    done = subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", params=["imagenet-val", "folders"])
def shards(request, tmp_path_factory) -> str:
    """A build of the 16 images: a flat folder + LOC_val_solution.csv, or class folders (valprep style)."""
    tmp = tmp_path_factory.mktemp(request.param)
    (tmp / "wnids.txt").write_text("".join(f"{w}\n" for w in CLASSES))
    numbered = dict(enumerate(images(), 1))
    if request.param == "imagenet-val":
        write_files(str(tmp / "val"), {file_name(n): data for n, data in numbered.items()})
        rows = [f"{file_name(n)[:-5]},{CLASSES[label(n)]} 1 2 30 40" for n in reversed(numbered)]
        (tmp / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
        extra = ("--labels", str(tmp / "LOC_val_solution.csv"))
    else:
        write_files(str(tmp / "val"), {f"{CLASSES[label(n)]}/{file_name(n)}": d for n, d in numbered.items()})
        extra = ("--prefix", "val")
    build(str(tmp / "val"), str(tmp / "out"), request.param, "--classes", str(tmp / "wnids.txt"), *extra)
    return str(tmp / "out" / "manifest.json")


def write_real(path, sets: dict[int, list[int]], count: int = NUM_IMAGES) -> dict[str, list[int]]:
    """A real.json over images 1..count (unlisted ones: [their label]), read back by load_real_labels."""
    path.write_text(json.dumps([sets.get(n, [label(n)]) for n in range(1, count + 1)]))
    return load_real_labels(path)


def batches(manifest_path: str, world_size: int, workers: int) -> list[dict]:
    """Every rank's batches (one rank after the other)."""
    manifest = load_manifest(manifest_path)
    loaders = [
        build_eval_loader(
            manifest, batch_size=3, rank=r, world_size=world_size, workers=workers, transform=eval_transform(16)
        )
        for r in range(world_size)
    ]
    return [batch for loader in loaders for batch in loader]


def evaluate(items: list[dict], real: dict[str, list[int]]) -> dict:
    """The metrics with logits that put 5.0 on `prediction(n)` of each image's source number n."""
    acc = EvalAccumulator(len(CLASSES), real_labels=real)
    for batch in items:
        numbers = [int(NUMBER.match(s).group(1)) for s in batch["source"]]
        assert batch["label"].tolist() == [label(n) for n in numbers]
        logits = 5.0 * torch.eye(len(CLASSES))[[prediction(n) for n in numbers]]
        acc.update(logits, batch["label"], keys=batch["key"], sources=batch["source"])
    return acc.result()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_real_accuracy_over_data_prep_shards(shards, tmp_path, world_size, workers):
    manifest = json.loads(open(shards).read())
    assert len(manifest["shards"]) == 4 and manifest["num_samples"] == NUM_IMAGES
    items = batches(shards, world_size, workers)
    assert sorted(s for b in items for s in b["source"]) == [file_name(n) for n in range(1, NUM_IMAGES + 1)]
    assert all(k.startswith("val-") for b in items for k in b["key"])  # renumbered: ReaL needs the source

    # (a) Each ReaL set is the image's label: ReaL accuracy is plain accuracy.
    same = evaluate(items, write_real(tmp_path / "same.json", {}))
    assert same["num_samples"] == same["real_num_samples"] == NUM_IMAGES
    assert same["top1"] == same["real_top1"] == 11 / 16

    # (b) Images 2, 3, 7 and 12 have empty sets: left out of ReaL only. Of the other 12, 6, 9 and 15 are wrong.
    emptied = evaluate(items, write_real(tmp_path / "emptied.json", {n: [] for n in (2, 3, 7, 12)}))
    assert emptied["num_samples"] == NUM_IMAGES and emptied["top1"] == 11 / 16
    assert emptied["real_num_samples"] == 12 and emptied["real_top1"] == 9 / 12

    # (c) Sets that differ from the label: the 5 wrong predictions become acceptable (3, 6, 9 by adding the
    # predicted class, 12 and 15 with a set of just that class); images 1 and 2 lose their label; 4 gets a
    # second label. So 14 of 16 are right.
    differ = {n: [label(n), prediction(n)] for n in (3, 6, 9)} | {n: [prediction(n)] for n in (12, 15)}
    differ |= {1: [(label(1) + 2) % 4], 2: [(label(2) + 1) % 4, (label(2) + 3) % 4], 4: [label(4), 0, 3]}
    changed = evaluate(items, write_real(tmp_path / "differ.json", differ))
    assert changed["top1"] == 11 / 16 and changed["real_num_samples"] == NUM_IMAGES
    assert changed["real_top1"] == 14 / 16


def test_a_source_missing_from_the_table_and_lookup_by_key_are_clear_errors(shards, tmp_path):
    items = batches(shards, 1, 0)
    short = write_real(tmp_path / "short.json", {}, count=10)
    missing = next(
        (k, s) for b in items for k, s in zip(b["key"], b["source"], strict=True) if int(NUMBER.match(s)[1]) > 10
    )
    with pytest.raises(ValueError) as error:
        evaluate(items, short)
    assert str(error.value) == (
        f"sample {missing[0]!r} (source file {missing[1]!r}) is not in the ReaL table "
        "(10 images, named like 'ILSVRC2012_val_00000001.JPEG')"
    )
    # The renumbered keys name no validation image: this is why samples are looked up by source.
    acc = EvalAccumulator(len(CLASSES), real_labels=short)
    first = items[0]
    with pytest.raises(ValueError, match=f"^no ReaL labels for sample '{first['key'][0]}'$"):
        acc.update(torch.zeros(len(first["label"]), len(CLASSES)), first["label"], keys=first["key"])
