"""The training and evaluation input pipeline over WebDataset shards (see train_loader.py for the design).

Trainer side, per step: item = next(loader); split item["image"] (uint8) into `accum` micro-batches, move
each to the device, device_preprocess(cfg, dtype)(x) (normalisation and the optional fixed permutation),
optionally MixupPerStep, and keep item["state"]; to resume, pass merge_states([every rank's state]) as `state`.
"""

from .eval_loader import EvalLoader, build_eval_loader
from .manifest import DataError, Manifest, Shard, check_head_classes, load_manifest
from .mixup import MixupPerStep
from .permutation import FixedPermutation
from .preprocess import DevicePreprocess, device_preprocess
from .state import merge_states
from .streams import StreamLayout, describe_assignment, make_layout
from .subset import subset_manifest
from .train_loader import TrainLoader, build_train_loader
from .transforms import EvalTransform, TrainTransform, eval_transform, normalize_on_device, train_transform

__all__ = [
    "DataError",
    "DevicePreprocess",
    "EvalLoader",
    "EvalTransform",
    "FixedPermutation",
    "Manifest",
    "MixupPerStep",
    "Shard",
    "StreamLayout",
    "TrainLoader",
    "TrainTransform",
    "build_eval_loader",
    "build_train_loader",
    "check_head_classes",
    "describe_assignment",
    "device_preprocess",
    "eval_transform",
    "load_manifest",
    "make_layout",
    "merge_states",
    "normalize_on_device",
    "subset_manifest",
    "train_transform",
]
