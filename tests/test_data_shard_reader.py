"""Shard reader: pieces by offset, pipe: URLs, early stop, short shards reported."""

import pytest

from pretrain.data.shard_reader import _KeepIndices, read_piece
from tests.helpers_shards import truncate, write_dataset


def keys(url, start, count, events, selection=None):
    on_truncated = lambda u, why: events.append((u, why))  # noqa: E731
    return [s["__key__"] for s in read_piece(url, start, count, on_truncated, selection)]


def test_reads_a_piece_from_an_offset_with_all_entries(tmp_path):
    write_dataset(str(tmp_path), [10])
    events = []
    samples = list(read_piece(f"{tmp_path}/shard-0000.tar", 7, 2, lambda *a: events.append(a)))
    assert [s["__key__"] for s in samples] == ["s00007", "s00008"]
    assert sorted(k for k in samples[0] if not k.startswith("__")) == ["cls", "jpg", "json"]
    assert samples[1]["cls"] == b"8" and events == []


@pytest.mark.timeout(30)
def test_pipe_urls_work_and_stopping_early_does_not_hang(tmp_path):
    write_dataset(str(tmp_path), [40])
    events = []
    assert keys(f"pipe:cat {tmp_path}/shard-0000.tar", 1, 2, events) == ["s00001", "s00002"]
    assert keys(f"pipe:cat {tmp_path}/shard-0000.tar", 38, 2, events) == ["s00038", "s00039"]
    assert events == []
    assert keys(f"pipe:cat {tmp_path}/missing.tar", 0, 2, events) == []
    assert len(events) == 1 and events[0][1].startswith("unreadable after 0 of its samples")


def test_reader_reports_a_truncated_shard_and_stops(tmp_path):
    write_dataset(str(tmp_path), [10])
    path = f"{tmp_path}/shard-0000.tar"
    truncate(path, 0.5)
    events = []
    assert keys(path, 2, 8, events) == ["s00002", "s00003", "s00004"]
    assert events == [(path, "unreadable after 5 of its samples: unexpected end of data")]
    events.clear()
    assert keys(path, 0, 3, events) == ["s00000", "s00001", "s00002"]
    assert events == []


def test_a_selection_reads_only_the_kept_samples_of_the_piece(tmp_path):
    write_dataset(str(tmp_path), [10])
    url, events = f"{tmp_path}/shard-0000.tar", []
    kept = (0, 2, 3, 7, 9)
    samples = list(read_piece(url, 1, 3, lambda *a: events.append(a), selection=kept))
    assert [s["__key__"] for s in samples] == ["s00002", "s00003", "s00007"]
    assert samples[2]["cls"] == b"7"
    assert sorted(k for k in samples[2] if not k.startswith("__")) == ["cls", "jpg", "json"]
    assert [s["__key__"] for s in read_piece(url, 0, 3, print, selection=kept)] == ["s00000", "s00002", "s00003"]
    assert keys(f"pipe:cat {url}", 3, 2, events, selection=kept) == ["s00007", "s00009"] and events == []


def test_a_selection_in_a_truncated_shard_reports_the_first_kept_sample_not_delivered(tmp_path):
    write_dataset(str(tmp_path), [10])
    path = f"{tmp_path}/shard-0000.tar"
    truncate(path, 0.5)
    events = []
    assert keys(path, 0, 4, events, selection=(1, 3, 6, 8)) == ["s00001"]  # as without a selection, the
    # last complete sample before the cut is lost: webdataset's group_by_keys held it when the read failed
    assert events == [(path, "unreadable after 3 of its samples: unexpected end of data")]


def test_the_selection_filter_drops_the_files_of_unkept_samples_before_the_last_kept_one():
    names = [f"{key}.{ext}" for key in "abcdefg" for ext in ("cls", "jpg")]
    keep = _KeepIndices(frozenset({1, 4}), last=4)
    assert [n for n in names if keep(n)] == ["b.cls", "b.jpg", "e.cls", "e.jpg", "f.cls", "f.jpg", "g.cls", "g.jpg"]
