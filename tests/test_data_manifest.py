"""load_manifest: fields, URL handling, data_prep's format version and keys, one-line errors."""

import json
import os

import pytest

from data_prep.errors import DataPrepError
from data_prep.manifest import FORMAT_VERSION, read_manifest
from pretrain.data import DataError, load_manifest
from tests.helpers_shards import write_dataset


def test_loads_from_folder_or_file_with_absolute_shard_paths(tmp_path):
    path = write_dataset(str(tmp_path), [3, 2], num_classes=4)
    for where in (str(tmp_path), path):
        m = load_manifest(where)
        assert (m.num_samples, m.num_classes, m.shard_sizes) == (5, 4, [3, 2])
        assert m.classes == ("class0", "class1", "class2", "class3")
        assert [s.url for s in m.shards] == [os.path.join(str(tmp_path), f"shard-000{i}.tar") for i in (0, 1)]
        assert m.shards[0].bytes == os.path.getsize(m.shards[0].url) and len(m.shards[0].sha256) == 64


def edit(path, *remove, **changes):
    """Rewrite the manifest at `path` without the keys `remove` and with `changes`."""
    with open(path) as f:
        doc = json.load(f)
    for key in remove:
        del doc[key]
    doc.update(changes)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_remote_names_are_kept_and_not_checked(tmp_path):
    path = write_dataset(str(tmp_path), [3])
    shard = {"num_samples": 3, "bytes": 1, "sha256": "0" * 64}
    names = ["pipe:curl -s https://example.org/a.tar", "s3://bucket/b.tar"]
    edit(path, num_samples=6, shards=[dict(shard, name=n) for n in names])
    assert [s.url for s in load_manifest(path).shards] == names


def test_errors_are_one_line(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError) as e:
        load_manifest(missing)
    assert str(e.value) == f"manifest not found: {missing}"
    path = write_dataset(str(tmp_path), [3, 2])
    os.remove(tmp_path / "shard-0001.tar")
    with pytest.raises(DataError) as e:
        load_manifest(str(tmp_path))
    assert str(e.value) == f"shard not found: {tmp_path}/shard-0001.tar (listed in {path})"
    edit(path, num_samples=4)
    with pytest.raises(DataError, match=r"num_samples is 4 but its shards hold 5$"):
        load_manifest(path)
    edit(path, shards=None)
    with pytest.raises(DataError, match=r"'shards' must be list, got NoneType$"):
        load_manifest(path)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match=f"^manifest {path} is unreadable: Expecting property name"):
        load_manifest(path)


def test_format_version_and_keys_are_data_preps_in_both_readers(tmp_path):
    path = write_dataset(str(tmp_path), [3])
    assert read_manifest(str(tmp_path))["format_version"] == FORMAT_VERSION and load_manifest(path).num_samples == 3
    future = FORMAT_VERSION + 1
    edit(path, format_version=future)
    supported = f"only format_version {FORMAT_VERSION} is supported"
    with pytest.raises(DataError) as e:
        load_manifest(path)
    assert str(e.value) == f"manifest {path} has format_version {future}, but {supported}"
    with pytest.raises(DataPrepError) as e:
        read_manifest(str(tmp_path))
    assert str(e.value) == f"{path} has format_version {future}, but {supported}"
    edit(path, format_version=str(FORMAT_VERSION))
    with pytest.raises(DataError, match=f"has format_version '{FORMAT_VERSION}', but {supported}$"):
        load_manifest(path)
    edit(path, "format_version")
    with pytest.raises(DataError) as e:
        load_manifest(path)
    assert str(e.value) == (
        f"manifest {path} has no format_version (format_version {FORMAT_VERSION} is supported): "
        "build it with data_prep"
    )
    edit(path, "class_counts", format_version=FORMAT_VERSION)
    with pytest.raises(DataError) as e:
        load_manifest(path)
    assert str(e.value) == f"manifest {path} lacks the key(s) class_counts"
    with open(path, "w") as f:
        json.dump([1], f)
    with pytest.raises(DataError) as e:
        load_manifest(path)
    assert str(e.value) == f"manifest {path} does not hold a JSON object"
