"""Any timm model as ``model.name``: which overrides apply to it, and building it with timm's own factory.

timm's factory passes every keyword to the model class, so an argument the class does not take (``img_size`` for a
ResNet) would fail there. We look at the class's constructor (the model built once on the meta device: no memory, no
random numbers drawn) and pass ``img_size`` and ``patch_size`` only where it takes them: a ResNet given an image size
simply runs at that size, while a patch size given to a model without patches is an error. The Mixer-only knobs
(``init``, ``gelu``) are an error unless left at their defaults.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import timm
import torch
from torch import nn

# Accepted by create_model for every model; the first four go to timm as they are.
TIMM_OVERRIDES = ("num_classes", "in_chans", "drop_rate", "drop_path_rate", "img_size", "patch_size")
MIXER_DEFAULTS = {"init": "flax", "gelu": "exact"}
_MIXER_KNOB_HINT = {"init": "it is built with timm's own initialisation", "gelu": "it uses its own activations"}


def is_timm_model(name: str) -> bool:
    """True when timm can build ``name`` (without pretrained weights)."""
    return timm.is_model(name)


def list_timm_models() -> list[str]:
    """Every architecture name timm can build."""
    return timm.list_models()


@functools.cache
def _constructor(name: str) -> tuple[str, frozenset[str]]:
    """The class name of timm model ``name`` and the keyword names its constructor takes."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return type(model).__name__, frozenset(inspect.signature(type(model).__init__).parameters)


def timm_override_problem(name: str, overrides: dict[str, Any]) -> tuple[str, str] | None:
    """``(key, message)`` for the first override that cannot apply to timm model ``name``, else None."""
    for key, default in MIXER_DEFAULTS.items():
        if key in overrides and overrides[key] != default:
            return key, (f"{key}={overrides[key]!r} applies to MLP-Mixer models only; {name} is a timm model and "
                         f"{_MIXER_KNOB_HINT[key]} (leave {key} at {default!r})")
    fixed = sorted(set(overrides) - set(TIMM_OVERRIDES) - set(MIXER_DEFAULTS))
    if fixed:
        return fixed[0], (f"cannot override {', '.join(fixed)} of {name}; overridable: "
                          f"{', '.join(sorted((*TIMM_OVERRIDES, *MIXER_DEFAULTS)))}")
    if overrides.get("patch_size"):
        cls, params = _constructor(name)
        if "patch_size" not in params:
            return "patch_size", f"{name} ({cls}) has no patches: its constructor takes no patch_size"
    return None


def create_timm_model(name: str, **overrides: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)`` with the overrides that apply to it.

    ``img_size`` is dropped for models whose constructor takes none (they run at any size); ``patch_size`` of 0 or
    None means the model's own; ``init``/``gelu`` at their defaults are ignored.
    """
    problem = timm_override_problem(name, overrides)
    if problem is not None:
        raise ValueError(problem[1])
    kwargs = {k: overrides[k] for k in TIMM_OVERRIDES if k in overrides}
    if not kwargs.get("patch_size"):
        kwargs.pop("patch_size", None)
    if kwargs.get("img_size") is None or "img_size" not in _constructor(name)[1]:
        kwargs.pop("img_size", None)
    return timm.create_model(name, pretrained=False, **kwargs)


def classifier(model: nn.Module) -> nn.Module | tuple[nn.Module, ...]:
    """The model's classifier module(s): ``get_classifier()`` where the model has it (timm; a distilled model gives
    two), else ``head``."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return model.head
