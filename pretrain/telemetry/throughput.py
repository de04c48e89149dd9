"""Step timing: throughput and the share of time spent waiting for data, over a logging window.

The trainer marks two moments per step: ``data_ready()`` when the batch is in hand and ``step_done(n)`` when
the optimizer step is finished (after something that waits for the device, such as ``loss.item()``, on a
GPU). The wait for data is the time from the previous ``step_done`` (or from the start) to ``data_ready``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ThroughputWindow:
    """What happened between two calls of :meth:`StepTimer.window`."""

    steps: int
    images: int
    seconds: float
    data_wait_seconds: float

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def sec_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    @property
    def data_wait_frac(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0


class StepTimer:
    """Accumulates step and data-wait times until :meth:`window` reads and resets them."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = clock()
        self._ready_at: float | None = None
        self._steps = self._images = 0
        self._seconds = self._wait = 0.0

    def data_ready(self) -> None:
        """The batch for the current step is available."""
        self._ready_at = self._clock()

    def step_done(self, num_images: int) -> None:
        """The current step, over ``num_images`` images, is finished."""
        now = self._clock()
        ready_at = self._last if self._ready_at is None else self._ready_at
        self._wait += ready_at - self._last
        self._seconds += now - self._last
        self._steps += 1
        self._images += num_images
        self._last, self._ready_at = now, None

    def restart(self) -> None:
        """Forget the time since the last step (after an evaluation or a checkpoint save)."""
        self._last, self._ready_at = self._clock(), None

    def window(self) -> ThroughputWindow:
        """The steps since the previous call; starts a new window."""
        result = ThroughputWindow(self._steps, self._images, self._seconds, self._wait)
        self._steps = self._images = 0
        self._seconds = self._wait = 0.0
        return result
