"""Every rank's random streams (Python, NumPy, torch CPU and CUDA) as one checkpointable component.

Saved as the list of all ranks' states (collective). A resume restores each rank's own where the checkpoint has
it; a rank it has none for (the job grew) gets streams derived from (seed, rank, the checkpoint's rank-0 torch
state): the same on every resume from that checkpoint, and never the streams a fresh run gives that rank (which
seeding from (seed, rank) alone would replay, e.g. after 4 -> 2 -> 4 ranks), nor another rank's.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import numpy as np
import torch

from pretrain.cluster.distributed import gather

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
        derived = derived_seed(self.seed, self.rank, states)
        log.info("checkpoint holds random states for %d ranks; rank %d gets streams derived from it (seed %d)",
                 len(states), self.rank, derived)
        random.seed(derived)
        np.random.seed(derived % 2**32)
        torch.manual_seed(derived)  # every device's generator too


def derived_seed(seed: int, rank: int, states: list[dict[str, Any]]) -> int:
    """A seed for `rank`, which `states` (a checkpoint's, for fewer ranks) lacks: a hash of (seed, rank, rank 0's
    saved torch state), so that each checkpoint gives each new rank its own streams, alike on every resume."""
    digest = hashlib.blake2b(f"rng/{seed}/{rank}".encode(), digest_size=8)
    if states:
        digest.update(states[0]["torch"].numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") % 2**63
