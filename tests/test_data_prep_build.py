"""data_prep.build: round trips through webdataset's reader, skipping, determinism, shard caps, resume."""

import hashlib
import io
import json
import os
import tarfile

import pytest
from PIL import Image

import data_prep.build
from data_prep.build import build
from data_prep.errors import DataPrepError
from data_prep.manifest import read_manifest
from data_prep.options import BuildOptions
from tests.helpers_data_prep import BROKEN, class_tree, good_images, read_back, write_files

CLASSES = ("cat", "dog", "fish")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """SRC/<class>/<image>: 8 good images per class, 3 broken ones in 'fish'; returns (root, {path: cls})."""
    root = tmp_path_factory.mktemp("tree")
    return str(root), class_tree(str(root), CLASSES, broken=True)


def _options(src, out, **kw):
    kw.setdefault("max_skipped_frac", 0.2)
    kw.setdefault("shard_max_samples", 5)
    return BuildOptions(layout=kw.pop("layout", "folders"), source=str(src), out=str(out), **kw)


def _quiet(options):
    return build(options, log=lambda line: None)


def _snapshot(out):
    """The visible content of an output folder: {name: sha256}."""
    result = {}
    for name in sorted(os.listdir(out)):
        if not name.startswith("."):
            with open(os.path.join(out, name), "rb") as f:
                result[name] = hashlib.sha256(f.read()).hexdigest()
    return result


@pytest.fixture(scope="module")
def clean(tree, tmp_path_factory):
    """A reference build of the tree (original bytes kept, at most 5 samples per shard)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    _quiet(_options(tree[0], out))
    return out


def test_folders_round_trip_through_webdataset(tree, clean):
    src, expected = tree
    manifest = read_manifest(str(clean))
    assert manifest["classes"] == list(CLASSES)
    assert (manifest["num_samples"], manifest["num_classes"], manifest["class_counts"]) == (24, 3, [8, 8, 8])
    assert sum(s["num_samples"] for s in manifest["shards"]) == 24
    samples = read_back(str(clean))
    seen = {}
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        image_ext = [k for k in sample if not k.startswith("__") and k not in ("cls", "json")]
        with open(os.path.join(src, meta["path"]), "rb") as f:
            assert sample[image_ext[0]] == f.read()
        assert CLASSES[int(sample["cls"])] == meta["class"] == expected[meta["path"]]
        assert image_ext == [
            "png" if meta["path"].endswith(("astronaut.png", "alpha.png", "palette.png")) else "jpg"
        ]
        assert key.startswith("train-") and len(key) == len("train-") + 9
        seen[meta["path"]] = key
    assert sorted(seen) == sorted(expected)


def test_every_shard_mixes_classes(clean):
    manifest = read_manifest(str(clean))
    full = [shard for shard in manifest["shards"] if shard["num_samples"] >= 4]
    assert len(full) >= 4
    for shard in full:
        with tarfile.open(clean / shard["name"]) as tar:
            classes = {tar.extractfile(m).read() for m in tar if m.name.endswith(".cls")}
        assert len(classes) >= 2, shard["name"]


def test_broken_files_are_skipped_with_reasons(clean):
    skipped = read_manifest(str(clean))["skipped"]
    assert [s["path"] for s in skipped] == sorted(f"fish/{name}" for name in BROKEN)
    for s in skipped:
        assert s["reason"].startswith(BROKEN[s["path"].split("/")[1]])


def test_tar_members_have_fixed_metadata(clean):
    with tarfile.open(clean / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {
        (0, 0, 0, 0o444, "data_prep", "data_prep")
    }
    assert [m.name.split(".")[1] for m in members[:3]] == sorted(m.name.split(".")[1] for m in members[:3])


def test_resize_reencodes_every_image_as_rgb_jpeg(tree, tmp_path):
    _quiet(_options(tree[0], tmp_path / "out", resize_shorter=48, quality=80))
    for sample in read_back(str(tmp_path / "out")).values():
        assert "jpg" in sample and "png" not in sample
        image = Image.open(io.BytesIO(sample["jpg"]))
        meta = json.loads(sample["json"])
        assert (image.mode, min(image.size)) == ("RGB", 48)
        assert abs(image.size[0] / image.size[1] - meta["width"] / meta["height"]) < 0.05


def test_same_seed_gives_identical_shards_for_any_worker_count(tree, clean, tmp_path):
    _quiet(_options(tree[0], tmp_path / "w2", workers=2))
    assert _snapshot(tmp_path / "w2") == _snapshot(clean)
    _quiet(_options(tree[0], tmp_path / "seed1", seed=1))
    other = read_manifest(str(tmp_path / "seed1"))
    assert other["class_counts"] == [8, 8, 8]
    assert other["shards"] != read_manifest(str(clean))["shards"]


def test_shard_max_bytes_cuts_shards(tree, tmp_path):
    limit = 60_000
    manifest = _quiet(_options(tree[0], tmp_path / "out", shard_max_samples=100, shard_max_bytes=limit))
    sizes = [s["bytes"] for s in manifest["shards"]]
    assert len(sizes) > 1 and manifest["num_samples"] == 24
    assert all(s["bytes"] <= limit or s["num_samples"] == 1 for s in manifest["shards"])
    assert sizes == [os.path.getsize(tmp_path / "out" / s["name"]) for s in manifest["shards"]]


def test_too_many_skipped_fails_without_a_manifest_then_resume_finishes(tree, clean, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataPrepError) as info:
        _quiet(_options(tree[0], out, max_skipped_frac=0.01, workers=1))
    assert str(info.value).startswith("1 of 27 images skipped (3.7% > --max-skipped-frac 0.01), e.g. fish/")
    assert str(info.value).endswith("no manifest written (fix the source, or raise the limit and --resume)")
    assert not os.path.exists(out / "manifest.json")
    assert not [n for n in os.listdir(out) if n.endswith(".tar")]
    _quiet(_options(tree[0], out, resume=True))
    assert _snapshot(out) == _snapshot(clean)


def test_resume_after_losing_the_manifest_and_a_shard_keeps_the_rest(tree, clean, tmp_path):
    out = tmp_path / "out"
    _quiet(_options(tree[0], out))
    os.remove(out / "manifest.json")
    os.remove(out / "train-000002.tar")
    with open(out / "train-000004.tar", "r+b") as f:  # a flipped byte: this shard must be rebuilt too
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 1]))
    shards = [n for n in os.listdir(out) if n.endswith(".tar")]
    for name in shards:  # a mark that a rename keeps and a rewrite loses
        os.utime(out / name, (12345, 12345))
    _quiet(_options(tree[0], out, resume=True))
    assert _snapshot(out) == _snapshot(clean)
    kept = {n for n in os.listdir(out) if n.endswith(".tar") and os.stat(out / n).st_mtime == 12345}
    assert kept == set(shards) - {"train-000004.tar"}
    assert len(kept) == len(read_manifest(str(out))["shards"]) - 2


def test_resume_after_a_crash_mid_build_equals_a_clean_build(tree, clean, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_run_block = data_prep.build.run_block

    def crash_in_block_3(task):
        if task.block == 3:
            with open(os.path.join(out, ".data_prep", "blocks", ".000003-000.tar.tmp"), "wb") as f:
                f.write(b"half a shard")
            raise RuntimeError("power cut")
        return real_run_block(task)

    monkeypatch.setattr(data_prep.build, "run_block", crash_in_block_3)
    with pytest.raises(RuntimeError, match="power cut"):
        _quiet(_options(tree[0], out))
    assert sorted(os.listdir(out)) == [".data_prep"]
    monkeypatch.setattr(data_prep.build, "run_block", real_run_block)
    _quiet(_options(tree[0], out, resume=True))
    assert _snapshot(out) == _snapshot(clean)
    assert not [n for n in os.listdir(out / ".data_prep" / "blocks") if n.endswith((".tmp", ".tar"))]


def test_resume_refuses_changed_options_and_output_folder_rules(tree, clean, tmp_path):
    out = tmp_path / "out"
    _quiet(_options(tree[0], out))
    with pytest.raises(DataPrepError, match=r"^cannot resume .*: option seed was 0, now 1; use --overwrite"):
        _quiet(_options(tree[0], out, seed=1, resume=True))
    with pytest.raises(
        DataPrepError, match=r"is not empty; pass --overwrite to replace its shards, or --resume"
    ):
        _quiet(_options(tree[0], out))
    _quiet(_options(tree[0], out, seed=1, overwrite=True))
    assert read_manifest(str(out))["options"]["seed"] == 1
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DataPrepError, match=r"holds files data_prep did not write \(e.g. mine.txt\)"):
        _quiet(_options(tree[0], out, overwrite=True))
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(DataPrepError, match="holds no interrupted build to resume"):
        _quiet(_options(tree[0], tmp_path / "other", resume=True))


def _val_folder(root):
    """Six validation images named like ImageNet's, and their wnids in file order."""
    images = list(good_images().values())[:6]
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    write_files(str(root), dict(zip(names, images, strict=True)))
    return names, ["n02", "n01", "n03", "n01", "n02", "n02"]


@pytest.mark.parametrize("fmt", ["devkit", "csv"])
def test_imagenet_val_round_trip(tmp_path, fmt):
    names, wnids = _val_folder(tmp_path / "val")
    synsets = ["n03", "n01", "n02"]
    if fmt == "devkit":
        (tmp_path / "labels").write_text("".join(f"{synsets.index(w) + 1}\n" for w in wnids))
        (tmp_path / "synsets").write_text("".join(f"{w} a description\n" for w in synsets))
        extra = {"synsets_file": str(tmp_path / "synsets")}
    else:
        rows = [f"{n.split('.')[0]},{w} 0 0 9 9" for n, w in zip(names, wnids, strict=True)]
        (tmp_path / "labels").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
        extra = {}
    options = _options(
        tmp_path / "val", tmp_path / "out", layout="imagenet-val", labels_file=str(tmp_path / "labels")
    )
    manifest = _quiet(BuildOptions(**{**options.__dict__, **extra}))
    assert manifest["classes"] == ["n01", "n02", "n03"] and manifest["num_samples"] == 6
    got = {
        json.loads(s["json"])["path"]: manifest["classes"][int(s["cls"])]
        for s in read_back(str(tmp_path / "out")).values()
    }
    assert got == dict(zip(names, wnids, strict=True))
    assert manifest["shards"][0]["name"] == "val-000000.tar"


def test_list_round_trip_reports_missing_files(tree, tmp_path):
    src, expected = tree
    chosen = sorted(expected)[::3]
    lines = [f"{p}\t{expected[p]}" for p in chosen] + ["cat/not_there.jpg\tcat"]
    (tmp_path / "subset.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("fish\ncat\ndog\n")
    options = _options(
        src,
        tmp_path / "out",
        layout="list",
        list_file=str(tmp_path / "subset.tsv"),
        classes_file=str(tmp_path / "classes.txt"),
        max_skipped_frac=0.2,
    )
    manifest = _quiet(options)
    assert manifest["skipped"] == [
        {"path": "cat/not_there.jpg", "reason": "unreadable (No such file or directory)"}
    ]
    got = {
        json.loads(s["json"])["path"]: ["fish", "cat", "dog"][int(s["cls"])]
        for s in read_back(str(tmp_path / "out")).values()
    }
    assert got == {p: expected[p] for p in chosen}
    assert manifest["shards"][0]["name"].startswith("subset-")


def test_digits_build(tmp_path):
    manifest = _quiet(BuildOptions(layout="digits", source="digits", out=str(tmp_path / "val"), split="val"))
    assert (manifest["num_samples"], manifest["num_classes"], len(manifest["shards"])) == (359, 10, 1)
    samples = read_back(str(tmp_path / "val"))
    assert len(samples) == 359
    image = Image.open(io.BytesIO(next(iter(samples.values()))["png"]))
    assert (image.size, image.mode) == ((32, 32), "RGB")
    assert manifest["options"]["source"] is None and manifest["shards"][0]["name"] == "val-000000.tar"
