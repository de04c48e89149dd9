"""The model a fine-tune (or an evaluation) takes from its init checkpoint when the config does not name one.

A run dir records its model in its resolved `config.yaml` (`model.name`, `model.patch_size`); so do its
`final.safetensors`, `checkpoints/` and checkpoint folders (the run dir above them). A bare Mixer weights file
(`.safetensors`, official `.npz`, `.pth`) is matched to the named variant with its depth and widths. The config's
own `model.name` (YAML or `--set`) wins when it agrees; a disagreement is one line naming both models.

`complete_model` is the `complete` hook of `pretrain.config.load_config`: it fills the raw mapping before it is typed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError

log = logging.getLogger(__name__)

CONFIG = "config.yaml"


@dataclass(frozen=True)
class CheckpointModel:
    """The model a checkpoint holds: its name and patch size (0: the variant's own), and where that was read."""

    name: str
    patch_size: int
    source: str

    def describe(self) -> str:
        return f"{self.name} with patch size {self.patch_size}" if self.patch_size else self.name


def run_config(path: Path) -> Path | None:
    """The `config.yaml` of the run that `path` (run dir, checkpoints dir, checkpoint folder, run weights) is of."""
    if path.is_file():
        folder = {"final.safetensors": path.parent, "final_ema.safetensors": path.parent,
                  "model.safetensors": path.parent.parent.parent}.get(path.name)
    elif path.name == "checkpoints":
        folder = path.parent
    elif path.parent.name == "checkpoints":
        folder = path.parent.parent
    else:
        folder = path
    return folder / CONFIG if folder is not None and (folder / CONFIG).is_file() else None


def checkpoint_model(path: str | Path) -> CheckpointModel | None:
    """The model of the checkpoint at `path`, or None when neither its run's config nor its shapes tell."""
    path = Path(path)
    if not path.exists():
        return None
    config = run_config(path)
    if config is not None:
        from pretrain.config.loader import read_yaml

        model = (read_yaml(config.read_text()) or {}).get("model") or {}
        if isinstance(model, dict) and isinstance(model.get("name"), str):
            return CheckpointModel(model["name"], int(model.get("patch_size") or 0), str(config))
    if path.is_file():
        variant = _variant_of_file(path)
        if variant is not None:
            return CheckpointModel(variant[0], variant[1], f"the shapes of {path}")
    return None


def _variant_of_file(path: Path) -> tuple[str, int] | None:
    """The Mixer variant of a weights file (a .safetensors file's shapes are read without its tensors)."""
    import torch

    from pretrain.models import WeightsError, read_weights
    from pretrain.models.registry import variant_of_weights

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the init check, with its path
            return None
    else:
        try:
            state = read_weights(path, mixer=True)
        except WeightsError:
            return None
    return variant_of_weights(state)


def complete_model(raw: dict[str, Any]) -> None:
    """Take `model.name` (and `model.patch_size`) from `init.path`'s checkpoint when the config leaves them out;
    a ConfigError when the config names another model than the checkpoint holds."""
    init = raw.get("init")
    path = init.get("path") if isinstance(init, dict) else None
    model = raw.setdefault("model", {})
    if not isinstance(path, str) or not path or not isinstance(model, dict):
        return  # the typed config names what is wrong
    held = checkpoint_model(path)
    if held is None:
        if "name" not in model and Path(path).exists():
            raise ConfigError(f"`model.name`: not in the config, and init.path {path} does not record its model "
                              "(not a run dir of ours, nor one of our Mixer variants); set model.name")
        return
    if "name" not in model:
        model["name"] = held.name
        log.info("model: %s, as the init checkpoint holds (%s)", held.describe(), held.source)
    elif model["name"] != held.name:
        raise ConfigError(f"`model.name`: the checkpoint is {held.name}, the config says {model['name']} (init.path "
                          f"{path}); {_way_out(held)}")
    given = model.setdefault("patch_size", held.patch_size) or 0
    if _effective_patch(held.name, given) != _effective_patch(held.name, held.patch_size):
        own = f"patch size {held.patch_size}" if held.patch_size else "its variant's own patch size"
        raise ConfigError(f"`model.patch_size`: the checkpoint is {held.name} with {own}, the config says "
                          f"{given} (init.path {path}); leave model.patch_size out to take the checkpoint's")


def _effective_patch(name: str, patch_size: Any) -> Any:
    """The patch size a model is built with: `patch_size`, or else its variant's own."""
    from pretrain.models.registry import model_patch_size

    return patch_size or model_patch_size(name) or 0


def _way_out(held: CheckpointModel) -> str:
    """`--set model.name=...`, or the shipped fine-tune config of the checkpoint's model when there is one."""
    shipped = Path(__file__).resolve().parents[1] / "configs" / "finetune" / f"{held.name}_in1k.yaml"
    config = f"use configs/finetune/{shipped.name}, or " if shipped.is_file() else ""
    return f"{config}--set model.name={held.name} to fine-tune the checkpoint's model"
