"""A checkpoint that does not fit on its disk, on a real full file system (a small tmpfs; needs root).

Pinned: the run stops with one line naming the checkpoint and 'no space left', exit status 2; the half-written
folder is gone and `latest` still names the previous, complete checkpoint, from which the run resumes.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from pretrain.components.checkpoint import Checkpointer
from tests.helpers_runs import failure, run, write_config


@pytest.fixture()
def small_disk(tmp_path):
    """A 16 MiB tmpfs: one demo checkpoint (about 10 MB) fits, a second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_latest_stays_on_the_last_complete_checkpoint(tmp_path, small_disk, shards):
    cfg = write_config(tmp_path / "cfg.yaml", "configs/demo.yaml", {
        "data.train": str(shards), "train.steps": 9, "checkpoint.every_steps": 3, "checkpoint.keep": 2,
        "logging.every_steps": 3, "logging.image_every_steps": 0, "data.workers": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(small_disk)
    proc = run("launch/pretrain.py", 1, "--config", str(cfg), "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, failure(proc)
    line = proc.stderr.strip().splitlines()[-1]
    assert line == (f"error: cannot write checkpoint {run_dir / 'checkpoints' / 'step-00000006'}: no space left on "
                    "the device (or quota exceeded); step-00000003 stays the latest checkpoint. Keeping "
                    "checkpoint.keep=2 checkpoints needs room for 3"), line
    assert Checkpointer(run_dir / "checkpoints", keep=2, rank=0).latest_tag() == "step-00000003"
    assert not (small_disk / "step-00000006").exists()
    assert not (run_dir / "final.safetensors").exists()
