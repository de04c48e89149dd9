"""Exact mid-epoch resume: same keys, same image tensors, same counters; layout mismatches are errors."""

import json
import os

import pytest
import torch

from pretrain.data import DataError, build_train_loader, load_manifest, merge_states, remote, train_transform
from tests.helpers_shards import encode, make_image, sample, truncate, write_dataset

TRANSFORM = train_transform(16, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25)


def loader(manifest, *, rank=0, world_size=1, accum=2, workers=2, state=None):
    return build_train_loader(
        manifest,
        micro_batch=2,
        accum=accum,
        rank=rank,
        world_size=world_size,
        workers=workers,
        seed=5,
        transform=TRANSFORM,
        shuffle_buffer=5,
        state=state,
    )


def take(ld, n):
    items = [next(ld) for _ in range(n)]
    ld.close()
    return items


def assert_same_steps(a, b):
    assert [i["step"] for i in a] == [i["step"] for i in b]
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        assert torch.equal(x["image"], y["image"])
        assert (x["corrupt"], x["truncated"]) == (y["corrupt"], y["truncated"])


def broken_dataset(path):
    """Four shards (N = 40, L = 10 with V = 2, W = 2) with two corrupt samples and a truncated shard."""
    garbage = sample("s00003", b"not an image at all", 3)
    cut = sample("s00012", encode(make_image(12))[:150], 2)
    manifest = write_dataset(path, [10, 10, 8, 12], replace={3: garbage, 12: cut})
    truncate(f"{path}/shard-0002.tar", 0.5)
    return load_manifest(manifest)


@pytest.mark.timeout(60)
def test_resume_mid_epoch_reproduces_keys_images_and_counters(tmp_path):
    m = broken_dataset(str(tmp_path))
    full = take(loader(m), 13)  # 4 steps per epoch: crosses three epoch boundaries
    assert full[-1]["corrupt"] > 0 and full[-1]["truncated"] > 0
    for k in (3, 5):  # odd k: the resumed DataLoader's worker 0 serves worker index 1
        state = json.loads(json.dumps(take(loader(m), k)[-1]["state"]))
        assert state["step"] == k
        assert_same_steps(take(loader(m, state=merge_states([state])), 13 - k), full[k:])


@pytest.mark.timeout(60)
def test_resume_two_ranks_as_one_rank_with_accumulation(tmp_path):
    m = broken_dataset(str(tmp_path))
    full = take(loader(m), 9)
    states = [take(loader(m, rank=r, world_size=2, accum=1), 4)[-1]["state"] for r in range(2)]
    assert_same_steps(take(loader(m, state=merge_states(states)), 5), full[4:])


def test_resume_with_another_layout_is_a_clear_error(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [10, 10]))
    state = take(loader(m, workers=0), 2)[-1]["state"]
    with pytest.raises(DataError) as e:
        loader(m, workers=2, state=state)
    assert str(e.value) == (
        "cannot resume the data order: it was saved with workers=1 (loader workers per rank), "
        "this run has workers=2"
    )
    with pytest.raises(
        DataError, match=r"saved with virtual_ranks=2 \(V = global batch / micro_batch\), this run has"
    ):
        loader(m, accum=1, workers=0, state=state)
    one_rank = take(loader(m, rank=0, world_size=2, accum=1, workers=0), 1)[-1]["state"]
    with pytest.raises(
        DataError, match=r"^the data state lacks stream 1; pass merge_states\(\) of all ranks"
    ):
        loader(m, rank=1, world_size=2, accum=1, workers=0, state=one_rank)


def test_merge_states_refuses_states_of_different_steps(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [10, 10]))
    a = take(loader(m, rank=0, world_size=2, accum=1, workers=0), 2)[-1]["state"]
    b = take(loader(m, rank=1, world_size=2, accum=1, workers=0), 3)[-1]["state"]
    with pytest.raises(DataError, match=r"^cannot merge data states with different step: 2 vs 3$"):
        merge_states([a, b])
    assert sorted(merge_states([a, a])["streams"]) == ["0"]


def test_resume_with_another_shuffle_buffer_or_shard_list_is_refused(tmp_path):
    """The position depends on the shuffle buffer and on the shards: a resume with either changed would repeat and
    skip samples silently, so each is recorded in the state and checked."""
    m = load_manifest(write_dataset(str(tmp_path / "a"), [10, 10]))
    state = take(loader(m, workers=0), 2)[-1]["state"]
    assert state["layout"]["shuffle_buffer"] == 5 and state["layout"]["shards"] == m.digest
    with pytest.raises(DataError) as e:
        build_train_loader(m, micro_batch=2, accum=2, rank=0, world_size=1, workers=0, seed=5, transform=TRANSFORM,
                           shuffle_buffer=6, state=state)
    assert str(e.value) == (
        "cannot resume the data order: it was saved with shuffle_buffer=5 (data.shuffle_buffer), "
        "this run has shuffle_buffer=6"
    )


def test_resume_on_other_shards_of_the_same_size_is_refused(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path / "a"), [10, 10]))
    other = load_manifest(write_dataset(str(tmp_path / "b"), [12, 8]))  # same num_samples, other shards
    state = take(loader(m, workers=0), 2)[-1]["state"]
    with pytest.raises(DataError, match=r"^cannot resume the data order: it was saved with shards=[0-9a-f]{16} "
                                        r"\(the shard list changed: names, sizes or checksums of data.train\), "
                                        r"this run has shards=[0-9a-f]{16}$"):
        loader(other, workers=0, state=state)


def test_a_state_of_another_version_is_a_clear_error(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [10, 10]))
    state = dict(take(loader(m, workers=0), 2)[-1]["state"], version=1)
    with pytest.raises(DataError, match=r"^cannot resume the data order: the data state has version 1, this code"):
        loader(m, workers=0, state=state)


class _CountingFile:
    """A binary file that adds what it reads to `counter`."""

    def __init__(self, path, counter):
        self.f, self.counter = open(path, "rb"), counter  # noqa: SIM115

    def read(self, n=-1):
        data = self.f.read(n)
        self.counter[0] += len(data)
        return data

    def seek(self, *args):
        return self.f.seek(*args)

    def close(self):
        self.f.close()


@pytest.mark.timeout(120)
def test_resume_reads_the_shuffle_buffer_not_the_epoch(tmp_path, monkeypatch):
    """Resumed at 180 of an epoch's 240 samples, the stream replays the buffer's draws on indices (no bytes read) and,
    per draw, reads the index entering the buffer and fetches the one drawn by offset: its first micro-batch of 2
    costs at most 4 samples' bytes, and the batches stay bit-identical."""
    m = load_manifest(write_dataset(str(tmp_path), [60, 60, 60, 60], size=(8, 8)))

    def one_stream(state=None):
        return build_train_loader(m, micro_batch=2, accum=1, rank=0, world_size=1, workers=0, seed=3,
                                  transform=TRANSFORM, shuffle_buffer=6, state=state)

    uninterrupted = take(one_stream(), 100)
    state = json.loads(json.dumps(take(one_stream(), 90)[-1]["state"]))
    read = [0]
    monkeypatch.setattr(remote, "open", lambda path, mode: _CountingFile(path, read), raising=False)
    resumed = one_stream(merge_states([state]))
    first = next(resumed)
    largest = max(os.path.getsize(f"{tmp_path}/shard-{i:04d}.tar") for i in range(4)) / 60 * 2  # > any sample
    assert 0 < read[0] <= 4 * largest
    assert_same_steps([first] + take(resumed, 9), uninterrupted[90:])
