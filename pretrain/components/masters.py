"""The fp32 master copy of each parameter of a DeepSpeed engine, wherever DeepSpeed keeps it.

Under bf16/fp16 the module holds a rounded working copy; the optimizer updates fp32 masters and rounds them into
it. The EMA and the exported weights are taken from the masters:
- ZeRO 1-3, and DeepSpeed's BF16_Optimizer: DeepSpeed's `safe_get_full_fp32_param` (a collective under ZeRO 1-3:
  every rank must ask for the same parameters in the same order);
- bf16/fp16 under ZeRO-0 (DeepSpeed's FP16_UnfusedOptimizer, also for bf16): its `fp32_groups`, parameter by
  parameter beside `fp16_groups` (`safe_get_full_fp32_param` answers None there);
- fp32: the parameter is its own master.
DeepSpeed's ZeRO-0 optimizer internals are read in pretrain/components/ds_internals.py (`zero0_masters`), with its
other private parts; tests/test_masters.py fails when a DeepSpeed upgrade moves them (the export would then no
longer equal the masters).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from deepspeed.utils import safe_get_full_fp32_param
from torch import nn

from pretrain.components.ds_internals import zero0_masters


class MasterNotFound(RuntimeError):
    """A low-precision parameter whose fp32 master DeepSpeed keeps nowhere we know of."""


class Masters:
    """The fp32 masters of `engine.module`'s parameters (`engine`: a DeepSpeed engine)."""

    def __init__(self, engine) -> None:
        self.module: nn.Module = engine.module
        self._zero0: dict[int, torch.Tensor] = zero0_masters(getattr(engine, "optimizer", None))

    def full(self, param: nn.Parameter) -> torch.Tensor:
        """`param`'s fp32 master, whole (a collective under ZeRO 1-3); do not modify it."""
        full = safe_get_full_fp32_param(param)
        if full is not None:
            return full
        if id(param) in self._zero0:
            return self._zero0[id(param)]
        if param.dtype == torch.float32:
            return param.detach()
        raise MasterNotFound(f"no fp32 master copy of a {param.dtype} parameter of shape {tuple(param.shape)}: this "
                             "DeepSpeed version keeps it where pretrain/components/masters.py does not look")

    def named(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, fp32 master) of every parameter of the module, in `named_parameters` order."""
        for name, param in self.module.named_parameters():
            yield name, self.full(param).float()
