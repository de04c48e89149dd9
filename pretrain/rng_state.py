"""Every rank's random streams (Python, NumPy, torch CPU and CUDA) as one checkpointable component.

Saved as the list of all ranks' states (collective). A resume on as many ranks restores each rank's own; a rank
the checkpoint has no state for (the job grew) is seeded from (seed, rank), the way a fresh run seeds it.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from pretrain.distributed import gather

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_rank(seed: int, rank: int) -> None:
    """The random streams of `rank` in a fresh run (dropout and drop-path differ per rank)."""
    random.seed(seed * 1000 + rank)
    np.random.seed(seed * 1000 + rank)
    torch.manual_seed(seed * 1000 + rank)


class RNGStates:
    """The random streams of every rank of the run."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank
        seed_rank(seed, rank)

    def state_dict(self) -> list[dict[str, Any]]:
        """Every rank's states in rank order (a collective: every rank calls it)."""
        return gather(rng_state())

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if self.rank < len(states):
            set_rng_state(states[self.rank])
            return
        log.warning("checkpoint holds random states for %d ranks; rank %d starts from seed %d", len(states),
                    self.rank, self.seed)
        seed_rank(self.seed, self.rank)
