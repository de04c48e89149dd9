"""What a run reports while it trains: TensorBoard scalars and images, and a progress line on stdout.

Only global rank 0 writes (a SummaryWriter in ``run_dir/tensorboard``); on other ranks, or when disabled,
every method does nothing, so the trainer calls them unconditionally. Watch a run with ``tensorboard
--logdir runs/``.

A resumed run opens the writer with ``purge_step`` (:meth:`Monitor.open`): TensorBoard then drops what an earlier
attempt logged after the restored checkpoint, so every step is shown once, with the value of the run that went on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pretrain.telemetry.throughput import ThroughputWindow

TENSORBOARD_SUBDIR = "tensorboard"


def _print_flushed(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m``; days, hours, minutes or seconds, two units at most."""
    total = max(0, int(round(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_progress(step: int, total_steps: int, loss: float, lr: float, window: ThroughputWindow) -> str:
    """One progress line: step/total, loss, learning rate, throughput, data wait and time left."""
    eta = format_duration((total_steps - step) * window.sec_per_step)
    return (
        f"step {step}/{total_steps} ({100.0 * step / total_steps:.1f}%) | loss {loss:.4f} | lr {lr:.3e} | "
        f"{window.images_per_sec:.1f} img/s | data wait {100.0 * window.data_wait_frac:.0f}% | eta {eta}"
    )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists become their text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value) if isinstance(value, (list, tuple)) else value
    return out


class Monitor:
    """Rank 0's TensorBoard writer and progress printer; a no-op elsewhere.

    ``every_steps`` sets how often :meth:`due` says yes: the trainer gathers its scalars on those steps
    (and on the last).
    ``emit`` receives each progress line (default: print to stdout, flushed).
    """

    def __init__(
        self,
        run_dir: str | Path,
        rank: int,
        enabled: bool = True,
        *,
        total_steps: int,
        every_steps: int = 50,
        emit: Callable[[str], None] = _print_flushed,
    ) -> None:
        if every_steps < 1 or total_steps < 1:
            raise ValueError(f"every_steps and total_steps must be >= 1, got {every_steps} and {total_steps}")
        self.active = enabled and rank == 0
        self.total_steps = total_steps
        self.every_steps = every_steps
        self._emit = emit
        self._log_dir = Path(run_dir) / TENSORBOARD_SUBDIR
        self._writer = None
        self._opened = False

    def open(self, first_step: int | None = None) -> None:
        """Open the writer for a run whose next step to log is `first_step` (0 for a new run, the restored step + 1
        after a resume): the events an earlier attempt logged at or after it are dropped (TensorBoard's
        `purge_step`). None, or no call (the first write opens the writer), keeps every earlier event."""
        if self._opened:
            raise RuntimeError("Monitor.open: the writer is already open (call it before the first write)")
        self._opened = True
        if self.active:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only where it writes

            self._writer = SummaryWriter(log_dir=str(self._log_dir), flush_secs=30, purge_step=first_step)

    @property
    def writer(self):
        """The SummaryWriter (opened at the first write), or None where this monitor writes nothing."""
        if not self._opened:
            self.open()
        return self._writer

    def due(self, step: int) -> bool:
        """True on the steps where the trainer should log: every ``every_steps`` and the last step."""
        return step % self.every_steps == 0 or step == self.total_steps

    def log_scalars(self, step: int, scalars: Mapping[str, float | torch.Tensor]) -> None:
        """Write each ``tag: value`` (a number or a one-element tensor) at ``step``."""
        if self.writer is None:
            return
        wall_time = time.time()
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), global_step=step, walltime=wall_time)

    def log_config(self, config: Mapping[str, Any], metrics: Sequence[str] = ()) -> None:
        """The run's resolved config as a text panel (YAML) and as hparams, so runs can be told apart; `metrics`:
        the scalar tags HParams shows as columns (their latest value in the run), so runs sort by them."""
        if self.writer is None:
            return
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = "```yaml\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```"
        self.writer.add_text("config", text, global_step=0)
        flat = {k: v for k, v in flatten(config).items() if isinstance(v, (int, float, str, bool))}
        for summary in hparams(flat, dict.fromkeys(metrics, 0.0)):  # only the names are written
            self.writer.file_writer.add_summary(summary)

    def log_image(self, tag: str, step: int, image: torch.Tensor) -> None:
        """Write a (C, H, W) or (H, W) image with values in [0, 1] (C is 1 or 3)."""
        if self.writer is None:
            return
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image {tag!r} must be (H, W) or (1|3, H, W), got shape {tuple(image.shape)}")
        pixels = image.detach().float().clamp(0, 1).cpu()
        self.writer.add_image(tag, pixels, global_step=step, dataformats="CHW")

    def progress(self, step: int, loss: float, lr: float, window: ThroughputWindow) -> None:
        """Emit the progress line for ``step`` (rank 0 only)."""
        if self.active:
            self._emit(format_progress(step, self.total_steps, loss, lr, window))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
