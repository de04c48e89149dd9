"""launch/report.py: one self-contained HTML page of several runs on the same axes, opened in headless Chromium
(Debian's `chromium`; .ci/run installs it) to check that every chart and picture renders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from launch.report import main
from pretrain.config import ConfigError
from pretrain.models import create_model
from pretrain.report.svg import COLORS, ticks
from pretrain.telemetry.monitor import Monitor
from pretrain.telemetry.weight_images import legible, token_mixing_image

IN_CI = os.environ.get("CI", "").lower() == "true"


def fake_run(root: Path, name: str, scale: float) -> Path:
    """A run dir as a training run leaves it: TensorBoard scalars and a picture, metrics.json, config.yaml."""
    run = root / name
    with Monitor(run, rank=0, total_steps=40) as monitor:
        for step in (10, 20, 30, 40):
            monitor.log_scalars(step, {"train/loss": scale * 2.3 / step, "train/lr": 1e-3, "train/mfu": 0.1,
                                       "train/images_per_sec": 100.0 * scale})
        for step in (20, 40):
            monitor.log_scalars(step, {"eval/fewshot/5shot": 0.4 * step / 40 / scale, "eval/val/top1": 0.5})
        monitor.log_image("weights/token_mixing", 40, legible(token_mixing_image(create_model("mixer_demo"))))
    (run / "metrics.json").write_text(json.dumps({"step": 40, "top1": 0.5, "top5": 0.9,
                                                 "fewshot": {"5shot": {"mean": 0.4 / scale}}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "mixer_demo", "img_size": 32}}))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    runs = [fake_run(root, "patches", 1.0), fake_run(root, "pixels", 2.0)]
    assert main([str(r) for r in runs]) == 0
    return root / "report.html"


def test_several_runs_share_each_chart(report):
    html = report.read_text()
    charts = re.findall(r'<svg class="chart".*?</svg>', html)
    titles = [re.search(r'aria-label="([^"]*)"', c).group(1) for c in charts]
    assert titles == ["training loss", "learning rate", "throughput (images/s)", "MFU", "fewshot/5shot", "val/top1"]
    assert all(c.count('class="series"') == 2 for c in charts)  # both runs on every chart
    assert html.count('src="data:image/png;base64,') == 2 and "http" not in html.replace("http://www.w3.org", "")
    cells = ["patches", "mixer_demo", "32", "40", "50.00%", "90.00%", "40.00%"]  # run, model, px, step, top1/5, 5shot
    assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in html


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: not a run dir \(no tensorboard/ and no metrics.json\)$"):
        main([str(tmp_path)])


def test_ticks_are_round_and_cover_the_range():
    assert ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert ticks(2.31, 2.36) == pytest.approx([2.31, 2.32, 2.33, 2.34, 2.35, 2.36])


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if IN_CI:
            pytest.fail("CI=true and no chromium (Debian package chromium)")
        pytest.skip("no chromium")
    return found


def test_the_report_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="6 charts, 2 images"' in dom  # laid out with a size, the pictures decoded
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1400,2400", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    for color in COLORS[:2]:  # each run's lines are on screen
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=1) < 30).sum() > 500, color
