"""data_prep.verify: a clean build passes; flipped bytes, missing shards, bad samples are named."""

import io
import os
import shutil
import tarfile

import pytest

from data_prep.build import build
from data_prep.cli import main
from data_prep.index import index_path, parse_index, write_index
from data_prep.manifest import read_manifest, write_manifest
from data_prep.options import BuildOptions
from data_prep.shards import ShardWriter
from data_prep.verify import verify
from tests.helpers_data_prep import class_tree


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A build of 24 images in 3 classes, 10 per shard."""
    root = tmp_path_factory.mktemp("verify")
    class_tree(str(root / "src"), ("cat", "dog", "fish"))
    options = BuildOptions(
        layout="folders", source=str(root / "src"), out=str(root / "out"), shard_max_samples=10
    )
    build(options, log=lambda line: None)
    return root / "out"


@pytest.fixture
def copy(built, tmp_path):
    return shutil.copytree(built, tmp_path / "out")


def _rewrite(out, shard_index, change):
    """Rewrite one shard with ``change(key, members)`` applied to each sample; fix its manifest entry."""
    manifest = read_manifest(str(out))
    entry = manifest["shards"][shard_index]
    path = os.path.join(out, entry["name"])
    with tarfile.open(path) as tar:
        samples = {}
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    writer = ShardWriter(path)
    for key, members in samples.items():
        writer.add(key, change(key, members))
    info = writer.close()
    write_index(path)
    entry.update(bytes=info.bytes, sha256=info.sha256)
    write_manifest(str(out), manifest)
    return sorted(samples)


def test_a_clean_build_verifies(built):
    result = verify(str(built), decode=True)
    assert result.ok, result.errors
    assert (result.num_samples, result.num_shards, result.class_counts) == (24, 3, [8, 8, 8])
    assert result.num_bytes == sum(s["bytes"] for s in read_manifest(str(built))["shards"])
    lines = result.summary().splitlines()
    assert lines[0].startswith(f"{built}: 24 samples, 3 classes, 3 shards, ")
    assert lines[1:] == ["samples per class: min 8 ('cat'), max 8 ('cat')", "OK"]


def test_a_flipped_byte_is_found_and_named(copy, capsys):
    with open(copy / "train-000001.tar", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0x40]))
    result = verify(str(copy))
    assert not result.ok
    assert result.errors[0].startswith("train-000001.tar: sha256 differs from the manifest")
    assert main(["verify", str(copy)]) == 1
    assert "train-000001.tar: sha256 differs" in capsys.readouterr().out


def test_a_missing_shard_is_found_and_named(copy, capsys):
    os.remove(copy / "train-000002.tar")
    result = verify(str(copy))
    assert result.errors == [
        "train-000002.tar: missing",
        "20 samples in all, manifest says 24",
        "samples per class differ from the manifest's class_counts",
    ]
    assert main(["verify", str(copy)]) == 1
    assert "  train-000002.tar: missing" in capsys.readouterr().out.splitlines()


def test_decode_finds_an_image_that_does_not_decode(copy):
    keys = _rewrite(copy, 0, lambda key, m: {**m, "jpg": b"not a jpeg"} if "jpg" in m else m)
    assert verify(str(copy)).ok
    errors = verify(str(copy), decode=True).errors
    assert errors and errors[0].startswith(
        f"train-000000.tar: sample {keys[0]}: jpg does not decode: not an image"
    )


def test_class_out_of_range_and_duplicate_keys(copy):
    keys = _rewrite(copy, 1, lambda key, m: {**m, "cls": b"3"})
    manifest = read_manifest(str(copy))
    manifest["shards"].append(dict(manifest["shards"][0]))
    write_manifest(str(copy), manifest)
    errors = verify(str(copy)).errors
    assert f"train-000001.tar: sample {keys[0]}: cls '3' is not in 0..2" in errors
    duplicates = [e for e in errors if e.endswith("key already seen in an earlier sample")]
    assert len(duplicates) == 10 and duplicates[0].startswith("train-000000.tar: sample train-")


def test_verify_without_a_manifest_is_a_one_line_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: no manifest.json in {tmp_path} (not a finished build)\n"


def test_the_index_is_checked_and_the_index_command_rebuilds_it(copy, capsys):
    name = read_manifest(str(copy))["shards"][1]["name"]
    path = os.path.join(copy, name)
    with open(index_path(path)) as f:
        size, entries = parse_index(f.read(), "idx")
    assert size == os.path.getsize(path) and len(entries) == 10
    with open(path, "rb") as f:  # each entry's bytes are a tar of that sample alone
        f.seek(entries[3].offset)
        with tarfile.open(fileobj=io.BytesIO(f.read(entries[3].size))) as one:
            names = one.getnames()
    assert {n.split(".", 1)[0] for n in names} == {entries[3].key} and len(names) == 3
    os.remove(index_path(path))
    problems = verify(str(copy)).errors
    assert problems == [f"{name}.idx: missing (write it with `python -m data_prep index {copy}`)"]
    with open(index_path(path), "w") as f:
        f.write(f"#mixer-shard-index 1 bytes={size} samples=1\n0 512 0 other\n")
    assert verify(str(copy)).errors == [
        f"{name}.idx: does not match its shard (write it with `python -m data_prep index {copy}`)"
    ]
    assert main(["index", str(copy)]) == 0
    assert capsys.readouterr().out == "indexed 24 samples in 3 shard(s)\n"
    assert verify(str(copy)).ok
    assert main(["index", str(copy / "nothing.tar")]) == 2
    assert capsys.readouterr().err == f"error: no such shard or folder: {copy / 'nothing.tar'}\n"
