"""The run's own counters: optimizer steps, non-finite steps (in total and in a row), samples seen."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainState:
    """Counters every rank holds alike; checkpointed as one small dict."""

    step: int = 0
    bad_steps: int = 0
    bad_in_a_row: int = 0
    samples_seen: int = 0

    def advance(self, global_batch: int, bad: bool) -> None:
        """Count one optimizer step over `global_batch` samples (a bad step applied no update)."""
        self.step += 1
        self.samples_seen += global_batch
        self.bad_steps += int(bad)
        self.bad_in_a_row = self.bad_in_a_row + 1 if bad else 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, int(value))
