"""Eval loader: every sample exactly once over ranks x workers, corrupt ones counted, re-iterable."""

import json

import pytest
import torch

from pretrain.data import build_eval_loader, eval_transform, load_manifest
from tests.helpers_shards import encode, make_image, sample, write_dataset

TRANSFORM = eval_transform(16)


def rank_loaders(manifest, world_size=2, workers=2, batch_size=4):
    return [
        build_eval_loader(
            manifest,
            batch_size=batch_size,
            rank=r,
            world_size=world_size,
            workers=workers,
            transform=TRANSFORM,
        )
        for r in range(world_size)
    ]


@pytest.mark.timeout(60)
def test_every_sample_exactly_once_over_two_ranks_and_two_workers(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 6, 8]))  # N = 21, odd
    loaders = rank_loaders(m)
    assert [ld.num_samples for ld in loaders] == [10, 11]  # parts of 5, 5, 5, 6
    keys, labels = [], []
    for ld in loaders:
        for batch in ld:
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 16, 16)
            assert len(batch["key"]) == len(batch["label"]) == len(batch["image"]) <= 4
            keys += batch["key"]
            labels += batch["label"].tolist()
    assert sorted(keys) == [f"s{i:05d}" for i in range(21)]
    assert labels == [int(k[1:]) % 10 for k in keys]
    assert [ld.corrupt for ld in loaders] == [0, 0]
    again = [k for ld in loaders for b in ld for k in b["key"]]
    assert again == keys  # one pass per iteration, same order


def test_corrupt_samples_are_skipped_and_reported(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [7, 6, 8], replace={15: sample("s00015", b"junk", 5)}))
    loaders = rank_loaders(m, workers=0)
    keys = [k for ld in loaders for b in ld for k in b["key"]]
    assert sorted(keys) == [f"s{i:05d}" for i in range(21) if i != 15]
    assert [ld.corrupt for ld in loaders] == [0, 1]


def test_bad_arguments(tmp_path):
    m = load_manifest(write_dataset(str(tmp_path), [3]))
    with pytest.raises(ValueError, match=r"^rank must be in \[0, 2\), got -1$"):
        build_eval_loader(m, batch_size=2, rank=-1, world_size=2, workers=0, transform=TRANSFORM)


def test_batches_carry_the_source_file_names(tmp_path):
    def with_json(g, doc):
        s = sample(f"s{g:05d}", encode(make_image(g)), g % 10)
        if doc is None:
            del s["json"]
        else:
            s["json"] = doc
        return s

    path = "n0{}/ILSVRC2012_val_{:08d}.JPEG"
    replace = {g: with_json(g, json.dumps({"path": path.format(g % 3, g + 1)}).encode()) for g in range(9)}
    replace[2] = with_json(2, None)  # no json member
    replace[4] = with_json(4, b'{"class": "n01"}')  # json without a path
    replace[6] = with_json(6, b"\xff not json")  # corrupt
    m = load_manifest(write_dataset(str(tmp_path), [4, 5], replace=replace))
    for workers in (0, 2):
        loaders = rank_loaders(m, workers=workers, batch_size=3)
        batches = [b for ld in loaders for b in ld]
        assert all(len(b["source"]) == len(b["key"]) for b in batches)
        got = {k: s for b in batches for k, s in zip(b["key"], b["source"], strict=True)}
        expected = {f"s{g:05d}": f"ILSVRC2012_val_{g + 1:08d}.JPEG" for g in range(9)}
        expected.update({"s00002": "", "s00004": ""})
        del expected["s00006"]
        assert got == expected
        assert sum(ld.corrupt for ld in loaders) == 1


def test_both_loaders_share_one_dataloader_set_up():
    """The training and evaluation loaders build their DataLoader in one place (the private generator, the workers'
    signal shield, prefetch); a bad prefetch is refused there for both."""
    from pretrain.data import dataloader

    with pytest.raises(ValueError, match=r"^need workers >= 0 and prefetch >= 1, got 1 and 0$"):
        dataloader.make_dataloader(None, workers=1, pin_memory=False, prefetch=0, persistent=False)
    import pretrain.data.eval_loader as ev
    import pretrain.data.train_loader as tr

    assert tr.make_dataloader is ev.make_dataloader is dataloader.make_dataloader
