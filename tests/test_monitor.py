"""Rank 0 writes TensorBoard scalars and images that read back exactly; other ranks write nothing."""

from io import BytesIO

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pretrain.telemetry.monitor import Monitor, format_duration, format_progress
from pretrain.telemetry.throughput import ThroughputWindow


def _events(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_rank0_scalars_and_images_read_back(tmp_path):
    image = torch.zeros(3, 4, 5)
    image[0, 1, 2] = 1.0  # one red pixel
    with Monitor(tmp_path, rank=0, total_steps=100) as monitor:
        monitor.log_scalars(10, {"train/loss": 2.5, "train/lr": torch.tensor(0.001)})
        monitor.log_scalars(20, {"train/loss": 1.25})
        monitor.log_image("weights/token_mixing", 20, torch.full((6, 7), 0.5))
        monitor.log_image("weights/stem", 20, image)
    acc = _events(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(10, 2.5), (20, 1.25)]
    assert [(e.step, e.value) for e in acc.Scalars("train/lr")] == [(10, pytest.approx(0.001))]
    assert sorted(acc.Tags()["images"]) == ["weights/stem", "weights/token_mixing"]
    [gray] = acc.Images("weights/token_mixing")
    [rgb] = acc.Images("weights/stem")
    assert (gray.step, gray.width, gray.height, rgb.width, rgb.height) == (20, 7, 6, 5, 4)
    pixels = Image.open(BytesIO(rgb.encoded_image_string)).convert("RGB")
    assert pixels.getpixel((2, 1)) == (255, 0, 0) and pixels.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(("rank", "enabled"), [(1, True), (0, False)])
def test_other_ranks_and_disabled_monitors_write_nothing(tmp_path, rank, enabled):
    lines = []
    with Monitor(tmp_path, rank=rank, enabled=enabled, total_steps=10, emit=lines.append) as monitor:
        monitor.log_scalars(1, {"train/loss": 1.0})
        monitor.log_image("x", 1, torch.zeros(1, 2, 2))
        monitor.progress(10, 1.0, 0.1, ThroughputWindow(1, 8, 1.0, 0.0))
        monitor.flush()
    assert not monitor.active
    assert list(tmp_path.iterdir()) == [] and lines == []


def test_bad_image_shape_is_refused(tmp_path):
    with Monitor(tmp_path, rank=0, total_steps=1) as monitor:
        with pytest.raises(ValueError) as err:
            monitor.log_image("x", 0, torch.zeros(2, 4, 4))
    assert str(err.value) == "image 'x' must be (H, W) or (1|3, H, W), got shape (2, 4, 4)"


def test_due_every_n_steps_and_on_the_last():
    monitor = Monitor("unused", rank=1, total_steps=25, every_steps=10)
    assert [s for s in range(1, 26) if monitor.due(s)] == [10, 20, 25]


def test_progress_line_has_step_loss_lr_throughput_and_eta(tmp_path):
    lines = []
    window = ThroughputWindow(steps=10, images=5120, seconds=4.0, data_wait_seconds=1.0)
    assert format_progress(100, 1000, 3.21049, 1.2e-3, window) == (
        "step 100/1000 (10.0%) | loss 3.2105 | lr 1.200e-03 | 1280.0 img/s | data wait 25% | eta 6m00s"
    )
    with Monitor(tmp_path, rank=0, total_steps=1000, emit=lines.append) as monitor:
        monitor.progress(100, 3.21049, 1.2e-3, window)
    assert lines == [format_progress(100, 1000, 3.21049, 1.2e-3, window)]


def test_progress_prints_flushed_to_stdout_by_default(tmp_path, capsys):
    with Monitor(tmp_path, rank=0, total_steps=2) as monitor:
        monitor.progress(2, 0.5, 0.0, ThroughputWindow(1, 4, 2.0, 0.0))
    assert capsys.readouterr().out == (
        "step 2/2 (100.0%) | loss 0.5000 | lr 0.000e+00 | 2.0 img/s | data wait 0% | eta 0s\n"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m"), (90000, "1d01h"), (-5, "0s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_bad_steps_are_refused():
    with pytest.raises(ValueError, match=r"^every_steps and total_steps must be >= 1, got 0 and 10$"):
        Monitor("unused", rank=0, total_steps=10, every_steps=0)
