"""Training loader: world-size-independent global batches, epochs without repeats, even steps, no RNG leak."""

import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch

from pretrain.data import build_train_loader, describe_assignment, load_manifest, train_transform
from tests.helpers_shards import write_dataset

TRANSFORM = train_transform(16, randaugment="rand-m9-mstd0.5-inc1")


def loader(
    manifest, *, rank=0, world_size=1, accum=1, workers=2, micro_batch=2, state=None, shuffle_buffer=4
):
    return build_train_loader(
        manifest,
        micro_batch=micro_batch,
        accum=accum,
        rank=rank,
        world_size=world_size,
        workers=workers,
        seed=11,
        transform=TRANSFORM,
        shuffle_buffer=shuffle_buffer,
        state=state,
    )


def take(ld, n):
    items = [next(ld) for _ in range(n)]
    ld.close()
    return items


@pytest.mark.timeout(60)
def test_two_ranks_and_two_accumulation_steps_see_the_same_global_batches(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [9, 6, 11]))  # N = 26, V = 2, W = 2: L = 6
    r0, r1 = take(loader(m, rank=0, world_size=2), 8), take(loader(m, rank=1, world_size=2), 8)
    single = take(loader(m, accum=2), 8)
    for k in range(8):
        assert r0[k]["step"] == r1[k]["step"] == single[k]["step"] == k
        assert r0[k]["key"] + r1[k]["key"] == single[k]["key"]
        assert torch.equal(torch.cat([r0[k]["image"], r1[k]["image"]]), single[k]["image"])
        assert torch.equal(torch.cat([r0[k]["label"], r1[k]["label"]]), single[k]["label"])
    assert single[0]["image"].shape == (4, 3, 16, 16) and single[0]["image"].dtype == torch.uint8
    assert single[0]["label"].dtype == torch.int64
    assert [int(k[1:]) % 10 for k in single[3]["key"]] == single[3]["label"].tolist()


@pytest.mark.timeout(60)
def test_three_shards_two_ranks_two_workers_read_each_rounds_ranges(tmp_path):
    sizes = [9, 6, 11]
    m = load_manifest(write_dataset(str(tmp_path), sizes))
    ranks = [loader(m, rank=r, world_size=2) for r in range(2)]
    spe = ranks[0].steps_per_round
    assert spe == ranks[1].steps_per_round == 6  # 4 streams x 6 samples, 2 per micro-batch, W = 2
    lay = ranks[0].layout
    offsets = [0, 9, 15]
    for round_ in range(2):  # round 1 reads the 2 samples round 0 left of epoch 0, then 22 of epoch 1
        keys = [k for _ in range(spe) for ld in ranks for k in next(ld)["key"]]
        expected = Counter(
            f"s{offsets[p.shard] + p.start + i:05d}"
            for pieces in describe_assignment(sizes, lay, round_)
            for p in pieces
            for i in range(p.count)
        )
        assert len(keys) == 24 and Counter(keys) == expected
    states = [ld.state() for ld in ranks]
    assert [s["step"] for s in states] == [12, 12]
    assert all(st["round"] == 2 and st["pos"] == 0 for s in states for st in s["streams"].values())
    for ld in ranks:
        ld.close()


def test_workers_zero_runs_in_process_like_one_worker_and_leaks_no_rng_state(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 8]))
    one = take(loader(m, workers=1), 5)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    zero = take(loader(m, workers=0), 5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    for a, b in zip(one, zero, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])


def test_iterating_again_continues_instead_of_restarting(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 8]))
    ld = loader(m, workers=0)
    first = [item["step"] for item in itertools.islice(ld, 3)]
    second = [item["step"] for item in itertools.islice(ld, 3)]
    assert (first, second) == ([0, 1, 2], [3, 4, 5])


def test_bad_rank_is_a_clear_error(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 8]))
    with pytest.raises(ValueError, match=r"^rank must be in \[0, 2\), got 2$"):
        loader(m, rank=2, world_size=2)


@pytest.mark.timeout(300)
def test_every_sample_exactly_once_per_epoch_on_an_uneven_layout(tmp_path):
    """1,001 samples over 3 virtual ranks x 2 workers, micro-batch 4: a round reads 984 of them; the 17 left at the
    end of an epoch open the next round instead of being dropped. After R rounds (X = 984 R samples read) every key
    was read floor(X / N) or floor(X / N) + 1 times, exactly X mod N of them the latter."""
    m = load_manifest(write_dataset(str(tmp_path), [400, 1, 350, 250], size=(8, 8)))
    ld = build_train_loader(m, micro_batch=4, accum=3, rank=0, world_size=1, workers=2, seed=2,
                            transform=train_transform(8), shuffle_buffer=20)
    assert (ld.layout.round_size, ld.steps_per_round) == (984, 82)
    seen: Counter[str] = Counter()
    for rounds in range(1, 5):
        for _ in range(ld.steps_per_round):
            seen.update(next(ld)["key"])
        read = 984 * rounds
        full, extra = divmod(read, 1001)
        counts = Counter(seen[f"s{i:05d}"] for i in range(1001))
        assert sum(seen.values()) == read and set(seen) <= {f"s{i:05d}" for i in range(1001)}
        assert counts == ({full: 1001 - extra, full + 1: extra} if extra else {full: 1001})
    ld.close()
