"""The build state kept in ``OUT/.data_prep/``: the plan file and one record per finished block.

``plan.json`` is written first (atomically). Each worker writes its block's shards as
``blocks/BBBBBB-PPP.tar`` (via a temporary name), then ``blocks/BBBBBB.json`` listing each shard's samples,
bytes and sha256: a block is done exactly when its record exists. The finished build renames the shards
to their final names; the records stay, so ``--resume`` can check any shard (even after the manifest is
lost) against what the build wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from data_prep.shards import ShardInfo
from fileio.atomic import atomic_write_json, is_temp_name

STATE_DIR = ".data_prep"


@dataclass(frozen=True)
class BlockRecord:
    """What one block produced: its shards in order, the skipped files, and samples per class."""

    block: int
    shards: list[ShardInfo]
    skipped: list[dict]
    class_counts: list[int]

    def to_json(self) -> dict:
        return {**asdict(self), "shards": [asdict(s) for s in self.shards]}

    @classmethod
    def from_json(cls, obj: dict) -> BlockRecord:
        return cls(obj["block"], [ShardInfo(**s) for s in obj["shards"]], obj["skipped"], obj["class_counts"])


class BuildState:
    """Paths and persistence of the state folder of one output folder."""

    def __init__(self, out: str):
        self.dir = os.path.join(out, STATE_DIR)
        self.blocks_dir = os.path.join(self.dir, "blocks")
        self.plan_path = os.path.join(self.dir, "plan.json")

    def create(self, plan_record: dict) -> None:
        """Start a fresh state with this plan."""
        os.makedirs(self.blocks_dir, exist_ok=True)
        atomic_write_json(self.plan_path, plan_record)

    def load_plan(self) -> dict | None:
        """The plan record of an earlier build, or None."""
        return _load_json(self.plan_path)

    def piece_path(self, block: int, piece: int) -> str:
        return os.path.join(self.blocks_dir, f"{block:06d}-{piece:03d}.tar")

    def record_path(self, block: int) -> str:
        return os.path.join(self.blocks_dir, f"{block:06d}.json")

    def save_record(self, record: BlockRecord) -> None:
        # Not flushed: a record garbled by a power cut fails to load, and its block is simply built again.
        atomic_write_json(self.record_path(record.block), record.to_json(), durable=False)

    def load_record(self, block: int) -> BlockRecord | None:
        """The block's record, or None if it is missing or unreadable (then the block is built again)."""
        obj = _load_json(self.record_path(block))
        try:
            return BlockRecord.from_json(obj) if obj is not None else None
        except (KeyError, TypeError):
            return None

    def discard(self, block: int) -> None:
        """Remove a block's record and shards, so that it is built again from nothing."""
        for name in os.listdir(self.blocks_dir):
            if name.startswith(f"{block:06d}-") or name == f"{block:06d}.json":
                os.remove(os.path.join(self.blocks_dir, name))

    def remove_temporaries(self) -> None:
        """Delete the ``.*.tmp`` leftovers of an interrupted build (in the state folder and beside it)."""
        for folder in (os.path.dirname(self.dir), self.dir, self.blocks_dir):
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if is_temp_name(name):
                        os.remove(os.path.join(folder, name))


def _load_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
