"""Atomic writes: the target is replaced only by a complete write, flushed to disk together with its folder's
rename; a failed write leaves the old file and no temp."""

import json
import os
import stat

import pytest

from fileio.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temp_name,
    temp_path,
)


def test_success_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_file_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    atomic_write_text(target, "old")
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, target.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(target, "new")
    assert calls == [("file", "old"), ("folder", "new")]
    calls.clear()
    atomic_write_text(target, "newer", durable=False)
    assert calls == [] and target.read_text() == "newer"


def test_json_bytes_and_temp_names(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [2]})
    assert (tmp_path / "a.json").read_text() == json.dumps({"b": 1, "a": [2]}, indent=2) + "\n"
    assert temp_path(tmp_path / "s.tar") == str(tmp_path / ".s.tar.tmp")
    assert is_temp_name(".s.tar.tmp") and is_temp_name(".s.tar.1a2b3c4d.tmp") and not is_temp_name("s.tar.tmp")
    with atomic_path(tmp_path / "x") as tmp:
        assert is_temp_name(tmp.name) and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
