"""An exponential moving average of the weights: fp32, on every rank, updated after each optimizer step.

ema <- decay * ema + (1 - decay) * weights, from the module's working weights (full on every rank under ZeRO 0-2;
ZeRO-3 is refused by the config). `swapped_in` puts the average into the module for an evaluation and the trained
weights back afterwards. Saved and resumed exactly with the run (a checkpoint component).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """The running average of `module`'s parameters, decay `decay` per optimizer step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay = module, decay
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.module.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The module holds the average (in its own dtype) inside the block, its trained weights again after."""
        params = dict(self.module.named_parameters())
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])

    def weights(self) -> dict[str, torch.Tensor]:
        """The average as an fp32 state dict on the CPU, with the module's persistent buffers (for export)."""
        state = {name: t.cpu().clone() for name, t in self.shadow.items()}
        persistent = self.module.state_dict().keys()
        for name, buf in self.module.named_buffers():
            if name in persistent:
                buf = buf.detach().cpu()
                state[name] = (buf.float() if buf.is_floating_point() else buf).clone()
        return state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("the EMA of the checkpoint is of another model")
        for name, t in state.items():
            self.shadow[name].copy_(t)
