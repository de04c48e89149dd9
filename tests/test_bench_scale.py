"""Smoke test of the scale benchmark at tiny sizes: each section's figures, the kill -9 + --resume build equal to the
uninterrupted one, the resume reading less than the replay, the 2-rank evaluation counting every sample once."""

import importlib.util
import json

import pytest

from benchmarks.bench_scale import main


def run(tmp_path, *args: str) -> dict:
    out = tmp_path / "figures.json"
    assert main([*args, "--json", str(out), "--tmp", str(tmp_path)]) == 0
    return json.loads(out.read_text())


def test_prep_and_loader_sections_at_tiny_sizes(tmp_path):
    figures = run(tmp_path, "--prep", "--loader", "--prep-sizes", "300", "1200", "--prep-classes", "7",
                  "--real-images", "4", "--loader-shards", "30", "--loader-per-shard", "50", "--loader-classes", "40",
                  "--loader-ranks", "2", "--loader-workers", "2", "--loader-micro-batch", "4",
                  "--resume-samples", "400", "--resume-shards", "4", "--resume-buffer", "40")
    sizes = figures["prep"]["sizes"]
    assert [r["images"] for r in sizes] == [300, 1200] and all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in sizes)
    kill = sizes[1]["kill"]  # the largest size by default
    assert "kill" not in sizes[0] and kill["equal_to_uninterrupted"] and kill["verify_ok"]
    assert figures["prep"]["real"]["images"] == 4
    loader = figures["loader"]
    assert loader["samples"] == 1500 and loader["streams"] == 4 and loader["state_bytes"] > 0
    assert loader["subset"]["kept"] == 40 * 4  # 1,500 samples over 40 classes: round(0.1 x 37 or 38) = 4 each
    resume = loader["resume"]
    assert resume["pos"] == 360 and 0 < resume["bytes_read"] < resume["replay_bytes"]
    if importlib.util.find_spec("matplotlib") is not None:
        png = tmp_path / "scale.png"
        assert main(["--from-json", str(tmp_path / "figures.json"), "--plot", str(png)]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_eval_section_counts_every_sample_once_over_2_ranks(tmp_path):
    figures = run(tmp_path, "--eval", "--eval-samples", "300", "--eval-classes", "10", "--shots", "1", "2")
    ranks = figures["eval"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:  # the counts are all-reduced: each rank reports the whole set, each sample once
        assert r["val"]["num_samples"] == 300 and r["val"]["real_num_samples"] == 300
        assert set(r["fs"]) == {"1shot", "2shot"}
        assert r["val_peak_mb"] > 0 and r["fs_peak_mb"] > 0
        assert 10 <= r["fs_shot_samples"] <= 2 * 10 * 3  # the shot sets' union, not the 300-sample pool
