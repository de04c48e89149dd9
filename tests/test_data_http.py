"""Shards over HTTP with faults: a real server on 127.0.0.1 that resets connections mid-shard and answers 503s; the
reads retry with backoff and resume with a Range request at the byte reached, so the samples equal local shards'."""

import json
import os
import sys

import pytest
import torch

from data_prep import manifest as prep_manifest
from pretrain.data import (
    DataError,
    build_train_loader,
    describe_assignment,
    load_manifest,
    merge_states,
    remote,
    train_transform,
)
from pretrain.data.shard_index import shard_index
from tests.helpers_http import FaultyServer
from tests.helpers_shards import write_dataset

TRANSFORM = train_transform(16)


def http_manifest(local: str, folder, url: str) -> str:
    """A manifest in `folder` naming the shards of the manifest `local` by their URLs under `url`."""
    with open(local) as f:
        doc = json.load(f)
    for shard in doc["shards"]:
        shard["name"] = f"{url}/{shard['name']}"
    os.makedirs(folder, exist_ok=True)
    prep_manifest.write_manifest(str(folder), doc)
    return os.path.join(folder, prep_manifest.MANIFEST_NAME)


def loader(manifest, state=None):
    return build_train_loader(manifest, micro_batch=4, accum=2, rank=0, world_size=1, workers=0, seed=4,
                              transform=TRANSFORM, shuffle_buffer=6, state=state)


def take(ld, n):
    items = [next(ld) for _ in range(n)]
    ld.close()
    return items


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    return write_dataset(str(tmp_path / "local"), [40, 30, 50])


@pytest.mark.timeout(120)
def test_http_shards_with_resets_and_503s_read_like_local_shards(tmp_path, shards):
    local = take(loader(load_manifest(shards)), 24)  # 2 rounds of 120 samples... in 8-sample steps: 192 samples
    with FaultyServer(os.path.dirname(shards), fail_every=5, reset_every=3, cut_bytes=5000) as server:
        m = load_manifest(http_manifest(shards, tmp_path / "http", server.url))
        over_http = take(loader(m), 24)
        state = json.loads(json.dumps(over_http[9]["state"]))
        resumed = take(loader(m, merge_states([state])), 14)
    assert server.counts["resets"] >= 3 and server.counts["503"] >= 3 and server.counts["ranges"] >= 3
    for a, b in zip(local, over_http, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
        assert (b["corrupt"], b["truncated"]) == (0, 0)  # nothing skipped, nothing duplicated
    for a, b in zip(over_http[10:], resumed, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and b["truncated"] == 0


@pytest.mark.timeout(120)
def test_a_shard_that_keeps_failing_is_a_counted_short_shard_after_the_retries(tmp_path, shards, monkeypatch):
    """Every response for shard 1 is reset early: each read of it fails 1 + RETRIES times, then the rest of its piece
    is given up without more requests and counted as one short shard; the other shards are read whole."""
    monkeypatch.setattr(remote, "RETRIES", 2)
    with FaultyServer(os.path.dirname(shards), broken=("shard-0001.tar",), cut_bytes=0) as server:
        m = load_manifest(http_manifest(shards, tmp_path / "http", server.url))
        ld = loader(m)
        items = take(ld, 11)  # 88 of round 0's 120 samples: 2 streams of 60
    pieces = [p for ps in describe_assignment(m.shard_sizes, ld.layout, 0) for p in ps if p.shard == 1]
    assert server.requests["shard-0001.tar"] == 3 * len(pieces)  # 1 + RETRIES per piece, not per sample
    assert (items[-1]["truncated"], items[-1]["corrupt"]) == (len(pieces), 0)
    keys = [int(k[1:]) for item in items for k in item["key"]]
    assert len(keys) == 88 and not any(40 <= k < 70 for k in keys)  # stream 1 runs ahead into its next round


FLAKY = """import os, sys
path, runs = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
with open(runs, "a") as f:
    f.write("x")
if os.path.getsize(runs) in (1, 2):  # the first two runs die half-way, like a dropped object-store download
    sys.stdout.buffer.write(data[: len(data) // 2])
    sys.stdout.buffer.flush()
    sys.exit(1)
sys.stdout.buffer.write(data)
"""


@pytest.mark.timeout(120)
def test_a_pipe_shard_whose_command_dies_is_run_again_and_read_on_from_the_byte_reached(tmp_path, shards):
    """A `pipe:` shard (the form of `pipe:aws s3 cp s3://bucket/shard.tar -`) whose command fails half-way is run again;
    the bytes before the offset reached are discarded, so the samples equal local shards'."""
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    with open(shards) as f:
        doc = json.load(f)
    folder = os.path.dirname(shards)
    for i, shard in enumerate(doc["shards"]):
        shard["name"] = f"pipe:{sys.executable} {script} {folder}/{shard['name']} {tmp_path}/ran-{i}"
    os.makedirs(tmp_path / "pipe")
    prep_manifest.write_manifest(str(tmp_path / "pipe"), doc)
    local = take(loader(load_manifest(shards)), 12)
    piped = take(loader(load_manifest(str(tmp_path / "pipe"))), 12)
    assert all(os.path.getsize(tmp_path / f"ran-{i}") >= 3 for i in range(3))  # index, failed read, retries
    for a, b in zip(local, piped, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and b["truncated"] == 0


def test_a_local_shard_without_an_index_gets_one_on_first_use_and_an_http_one_is_a_clear_error(tmp_path, shards):
    folder = os.path.dirname(shards)
    for i in range(3):
        os.remove(f"{folder}/shard-{i:04d}.tar.idx")
    m = load_manifest(shards)
    assert len(take(loader(m), 15)) == 15  # a round: every shard read
    assert all(os.path.isfile(f"{folder}/shard-{i:04d}.tar.idx") for i in range(3))
    os.remove(f"{folder}/shard-0000.tar.idx")
    with FaultyServer(folder) as server:
        m = load_manifest(http_manifest(shards, tmp_path / "http", server.url))
        with pytest.raises(DataError) as e:
            shard_index(m.shards[0])
    assert str(e.value) == (f"shard {server.url}/shard-0000.tar has no index {server.url}/shard-0000.tar.idx: build it "
                            "with `python -m data_prep index <folder of the shards>` and upload it beside the shard")
