"""An exponential moving average of the weights: fp32, on every rank, updated after each optimizer step.

ema <- decay * ema + (1 - decay) * weights, from the fp32 master weights (`pretrain.components.masters`; under ZeRO 1-2
a collective, one all-reduce per parameter per step, every rank updates its EMA; ZeRO-3 is refused by the config),
not from a bf16/fp16 working copy: late in a decayed schedule the updates fall below bf16 resolution and an EMA of
the working copy would converge to rounded weights. A module that is not in an engine (tests) is its own master.
`swapped_in` puts the average into the module for an evaluation and the trained weights back afterwards. Saved and
resumed exactly with the run (a checkpoint component).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pretrain.components.masters import Masters


class EMA:
    """The running average of `module`'s parameters, decay `decay` per optimizer step, over the fp32 weights
    `masters` gives (a `pretrain.components.masters.Masters` of the engine; default: the module's own parameters)."""

    def __init__(self, module: nn.Module, decay: float, masters: Masters | None = None) -> None:
        self.module, self.decay, self.masters = module, decay, masters
        self.shadow = {name: w.detach().float().clone() for name, w in self._weights()}

    def _weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.masters.named() if self.masters is not None else self.module.named_parameters()

    @torch.no_grad()
    def update(self) -> None:
        for name, w in self._weights():
            self.shadow[name].lerp_(w.detach().float(), 1.0 - self.decay)

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
