"""Per-class subsets: the selection rule, the label scan, the cache, and the loaders reading only kept samples."""

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from pretrain.data import (
    DataError,
    build_eval_loader,
    build_train_loader,
    eval_transform,
    load_manifest,
    merge_states,
    subset_manifest,
    train_transform,
)
from pretrain.data import subset as subset_module
from pretrain.data.shard_index import shard_index
from pretrain.data.shard_reader import read_piece
from pretrain.data.subset import NO_LABEL, cache_path, kept_per_class, scan_labels, select_subset
from tests.helpers_shards import sample, write_dataset, write_manifest, write_shard

TRANSFORM = train_transform(16, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25)


def synthetic(sizes, seed=3):
    """200 (key, label) pairs, classes 0..6 holding 1, 5, 10, 13, 25, 50, 96 samples in a shuffled order, cut
    into shards of `sizes` (repeated) in key order."""
    labels = [c for c, n in enumerate((1, 5, 10, 13, 25, 50, 96)) for _ in range(n)]
    random.Random(seed).shuffle(labels)
    pairs = [(f"k{i:05d}", label) for i, label in enumerate(labels)]
    shards, i, s = [], 0, 0
    while i < len(pairs):
        shards.append(pairs[i : i + sizes[s % len(sizes)]])
        i, s = i + sizes[s % len(sizes)], s + 1
    return shards


def kept(labels, selections):
    return {labels[s][i] for s, sel in enumerate(selections) for i in sel}


def test_selection_is_deterministic_and_independent_of_the_sharding():
    a, b = synthetic([50]), synthetic([13, 170, 7])
    assert kept(a, select_subset(a, 0.1, 0)) == kept(b, select_subset(b, 0.1, 0))
    assert select_subset(a, 0.1, 0) == select_subset(a, 0.1, 0)
    reversed_shards = a[::-1]
    assert kept(reversed_shards, select_subset(reversed_shards, 0.1, 0)) == kept(a, select_subset(a, 0.1, 0))
    assert kept(a, select_subset(a, 0.1, 1)) != kept(a, select_subset(a, 0.1, 0))
    assert all(list(sel) == sorted(sel) for sel in select_subset(a, 0.3, 0))


def test_each_class_keeps_max_1_round_half_up_fraction_of_its_samples():
    labels = synthetic([50])
    sizes = Counter(label for shard in labels for _, label in shard)
    for fraction, expected in ((0.03, [1, 1, 1, 1, 1, 2, 3]), (0.1, [1, 1, 1, 1, 3, 5, 10]),
                               (0.5, [1, 3, 5, 7, 13, 25, 48]), (1.0, [1, 5, 10, 13, 25, 50, 96])):
        got = Counter(label for _, label in kept(labels, select_subset(labels, fraction, 0)))
        assert [got[c] for c in range(7)] == expected
        assert expected == [kept_per_class(sizes[c], fraction) for c in range(7)]
    assert kept_per_class(10, 0.05) == 1 and kept_per_class(10, 0.25) == 3 and kept_per_class(10, 0.35) == 4


def test_larger_fractions_keep_supersets_and_fraction_one_keeps_every_labelled_sample():
    labels = synthetic([64])
    for seed in (0, 7):
        sets = [kept(labels, select_subset(labels, f, seed)) for f in (0.03, 0.05, 0.1, 0.3, 0.5, 1.0)]
        assert all(small < large for small, large in zip(sets, sets[1:], strict=False))
    assert kept(labels, select_subset(labels, 1.0, 0)) == {p for shard in labels for p in shard}
    unlabelled = [[("a", NO_LABEL), ("b", 0), ("c", NO_LABEL)]]
    assert select_subset(unlabelled, 1.0, 0) == ((1,),)
    with pytest.raises(ValueError, match=r"^fraction must be in \(0, 1\], got 0$"):
        select_subset(unlabelled, 0, 0)


def slow_labels(manifest):
    """Labels read the slow way: webdataset's full iteration, every member extracted."""
    return [[(s["__key__"], int(s["cls"])) for s in read_piece(sh.url, 0, sh.num_samples, print)]
            for sh in manifest.shards]


def test_scan_reads_the_labels_webdataset_reads_from_the_index_without_opening_a_shard(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 12, 5], num_classes=4))
    labels = scan_labels(m)
    assert labels == slow_labels(m)
    assert labels[1][:3] == [("s00007", 3), ("s00008", 0), ("s00009", 1)]
    pipes = [dataclasses.replace(s, name=f"pipe:cat {s.url}", url=f"pipe:cat {s.url}") for s in m.shards]
    piped = dataclasses.replace(m, shards=tuple(pipes))
    assert scan_labels(piped, threads=1) == labels  # a pipe: shard is indexed by streaming it once
    selection = subset_manifest(m, 0.5, 0, tmp_path / "a", rank=0).selections
    for shard in m.shards:  # the shards' bytes are not read to choose a subset: zeros give the same one
        Path(shard.url).write_bytes(bytes(shard.bytes))
    shard_index.cache_clear()
    assert subset_manifest(m, 0.5, 0, tmp_path / "b", rank=0).selections == selection


def test_scan_marks_missing_or_bad_labels_and_skips_metadata_members(tmp_path):
    samples = [sample("a", b"img", 1), {"__key__": "__info__/x", "txt": b"metadata"}, sample("b", b"img", None),
               sample("c", b"img", 9), sample("d", b"img", 0), sample("e", b"img", 2)]
    samples[-1]["cls"] = b"seven"
    write_shard(str(tmp_path / "shard-0000.tar"), samples)
    m = load_manifest(write_manifest(str(tmp_path), ["shard-0000.tar"], [5], num_classes=3))
    assert scan_labels(m) == [[("a", 1), ("b", NO_LABEL), ("c", NO_LABEL), ("d", 0), ("e", NO_LABEL)]]


def test_scan_of_a_shard_that_does_not_fit_the_manifest_is_one_clear_line(tmp_path):
    write_dataset(str(tmp_path), [10, 10])
    m = load_manifest(write_manifest(str(tmp_path), ["shard-0000.tar", "shard-0001.tar"], [10, 12], 10))
    with pytest.raises(DataError) as e:
        scan_labels(m)
    size = m.shards[1].bytes
    assert str(e.value) == (f"shard {tmp_path}/shard-0001.tar: its index lists 10 samples in {size} bytes, the "
                            "manifest 12 in {size}: check the shards with `python -m data_prep verify` and rebuild "
                            f"the index with `python -m data_prep index {tmp_path}`").replace("{size}", str(size))


def test_subset_is_cached_reused_and_rebuilt_when_the_data_changes(tmp_path, monkeypatch):
    m = load_manifest(write_dataset(str(tmp_path / "a"), [10, 10, 10]))
    assert subset_manifest(m, 1.0, 0, tmp_path / "cache", rank=0) is m
    first = subset_manifest(m, 0.3, 0, tmp_path / "cache", rank=0)
    assert first.num_samples == 10 and first.shard_sizes == [len(s) for s in first.selections]
    assert first.subset.startswith("0.3/seed0/") and first.subset != "all"
    doc = json.loads(cache_path(tmp_path / "cache", 0.3, 0).read_text())
    assert doc["kept_per_class"] == [1] * 10 and doc["name"] == first.subset
    scans = []
    real_scan = subset_module.scan_labels
    monkeypatch.setattr(subset_module, "scan_labels", lambda *a: scans.append(1) or real_scan(*a))
    assert subset_manifest(m, 0.3, 0, tmp_path / "cache", rank=0) == first and scans == []
    assert subset_manifest(m, 0.3, 0, tmp_path / "cache", rank=1) == first and scans == []  # ranks > 0 only read
    changed = load_manifest(write_dataset(str(tmp_path / "a"), [12, 18]))  # same path, other shards
    assert subset_manifest(changed, 0.3, 0, tmp_path / "cache", rank=0).shard_sizes != first.shard_sizes
    assert scans == [1]
    cache_path(tmp_path / "cache", 0.3, 0).write_text("{not json")
    subset_manifest(changed, 0.3, 0, tmp_path / "cache", rank=0)
    assert scans == [1, 1]


def test_subset_errors_reach_every_rank_as_one_line(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [10, 10]))
    with pytest.raises(DataError) as e:
        subset_manifest(m, 0.5, 0, tmp_path / "elsewhere", rank=1)
    assert str(e.value) == (f"rank 1 cannot read the subset cache {tmp_path}/elsewhere/subset-0.5-seed0.json: "
                            "the run folder must be shared by all nodes")
    (tmp_path / "shard-0001.tar.idx").write_text("not an index\n")
    with pytest.raises(DataError, match=r"^.*shard-0001.tar.idx is not a shard index of version 1: rebuild it with "):
        subset_manifest(m, 0.5, 0, tmp_path / "cache", rank=0)


def loader(manifest, state=None, workers=2):
    return build_train_loader(manifest, micro_batch=2, accum=2, rank=0, world_size=1, workers=workers, seed=5,
                              transform=TRANSFORM, shuffle_buffer=5, state=state)


def take(ld, n):
    items = [next(ld) for _ in range(n)]
    ld.close()
    return items


@pytest.fixture
def half(tmp_path):
    """80 samples, 8 per class, in shards of uneven size; the 0.5 subset keeps 4 per class: 40 = 4 streams x 10."""
    full = load_manifest(write_dataset(str(tmp_path / "data"), [23, 9, 30, 18]))
    return full, subset_manifest(full, 0.5, 0, tmp_path / "cache", rank=0)


@pytest.mark.timeout(60)
def test_train_loader_reads_each_kept_sample_once_per_epoch_and_nothing_else(half):
    full, sub = half
    labels = scan_labels(full)
    wanted = {key for key, _ in kept(labels, sub.selections)}
    assert sub.num_samples == len(wanted) == 40
    ld = loader(sub)
    assert ld.steps_per_round == 10
    items = take(ld, 20)
    for epoch in (items[:10], items[10:]):
        keys = [k for item in epoch for k in item["key"]]
        assert sorted(keys) == sorted(wanted)
    assert [k for item in items[:10] for k in item["key"]] != [k for item in items[10:] for k in item["key"]]
    item = items[3]
    assert item["label"].tolist() == [int(k[1:]) % 10 for k in item["key"]]
    assert items[-1]["corrupt"] == items[-1]["truncated"] == 0


@pytest.mark.timeout(60)
def test_resume_mid_epoch_on_a_subset_is_exact_and_another_subset_is_refused(half):
    full, sub = half
    uninterrupted = take(loader(sub), 13)
    state = json.loads(json.dumps(take(loader(sub), 5)[-1]["state"]))
    resumed = take(loader(sub, state=merge_states([state])), 8)
    for a, b in zip(resumed, uninterrupted[5:], strict=True):
        assert (a["step"], a["key"]) == (b["step"], b["key"])
        assert torch.equal(a["image"], b["image"])
    other = dataclasses.replace(sub, subset="0.5/seed1/000000000000")
    with pytest.raises(DataError) as e:
        loader(other, state=state)
    assert str(e.value) == (f"cannot resume the data order: it was saved with subset={sub.subset} "
                            "(data.subset_fraction / data.subset_seed), this run has subset=0.5/seed1/000000000000")
    full_state = take(loader(full, workers=0), 1)[-1]["state"]
    with pytest.raises(DataError, match=r"^cannot resume the data order: it was saved with subset=all \(data"):
        loader(sub, state=full_state, workers=0)


def test_eval_loader_over_a_subset_reads_the_kept_samples(half):
    full, sub = half
    wanted = sorted(key for key, _ in kept(scan_labels(full), sub.selections))
    ld = build_eval_loader(sub, batch_size=8, rank=0, world_size=1, workers=0, transform=eval_transform(16))
    assert sorted(k for batch in ld for k in batch["key"]) == wanted
