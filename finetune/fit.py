"""The one check before a fine-tuning init is loaded: the state dict must fit the model, or a one-line InitError."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch

from finetune.errors import InitError

# (key, model shape, checkpoint shape) -> the shape the checkpoint's entry must have
ExpectedShape = Callable[[str, tuple, tuple], tuple]


def check_fits(
    state: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    what: str,
    ignore_missing: Collection[str] = (),
    expected_shape: ExpectedShape | None = None,
) -> None:
    """One-line errors for missing (other than `ignore_missing`), unexpected or mis-shaped entries
    (``load_state_dict`` would list them all). `expected_shape` lets an entry's shape follow the checkpoint
    (the Mixer's token-mixing width); by default it must equal the model's."""
    missing = [k for k in model_state if k not in state and k not in ignore_missing]
    unexpected = [k for k in state if k not in model_state]
    if missing or unexpected:
        raise InitError(
            f"{what} does not fit the model: {len(missing)} missing entries {missing[:3]}, "
            f"{len(unexpected)} unexpected entries {unexpected[:3]}"
        )
    for key, value in state.items():
        model_shape, shape = tuple(model_state[key].shape), tuple(value.shape)
        expected = expected_shape(key, model_shape, shape) if expected_shape else model_shape
        if shape != expected:
            raise InitError(
                f"{what} does not fit the model: {key} has shape {shape} in the checkpoint but {expected} in the model"
            )
