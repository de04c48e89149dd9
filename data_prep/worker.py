"""What one worker does with one block: read, validate and encode each sample, write the block's shards.

A new shard starts when the next sample would push the current one past ``max_bytes`` (a sample larger
than that gets a shard of its own), so the cut points depend only on the block's content. The block record
is written last, after its shards are complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data_prep.encode import BadImage, EncodedImage, encode_image
from data_prep.plan import sample_key
from data_prep.shards import ShardInfo, ShardWriter, sample_bytes, shard_bytes
from data_prep.sources import Reader
from data_prep.state import BlockRecord, BuildState


@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs for one block (picklable)."""

    block: int
    first_position: int
    items: list[tuple[str, int]]
    classes: list[str]
    reader: Reader
    prefix: str
    resize_shorter: int | None
    quality: int
    max_bytes: int
    out: str


def _sample_members(ref: str, cls: int, classes: list[str], image: EncodedImage) -> dict[str, bytes]:
    meta = {"path": ref, "class": classes[cls], "width": image.width, "height": image.height}
    return {
        image.ext: image.data,
        "cls": str(cls).encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def run_block(task: BlockTask) -> BlockRecord:
    """Write the block's shards into the state folder and its record; return the record."""
    state = BuildState(task.out)
    shards: list[ShardInfo] = []
    skipped: list[dict] = []
    counts = [0] * len(task.classes)
    writer: ShardWriter | None = None
    try:
        for offset, (ref, cls) in enumerate(task.items):
            try:
                image = encode_image(task.reader.read(ref), task.resize_shorter, task.quality)
            except OSError as e:
                skipped.append({"path": ref, "reason": f"unreadable ({e.strerror or e})"})
                continue
            except BadImage as e:
                skipped.append({"path": ref, "reason": str(e)})
                continue
            members = _sample_members(ref, cls, task.classes, image)
            if writer is not None and shard_bytes(writer.payload + sample_bytes(members)) > task.max_bytes:
                shards.append(writer.close())
                writer = None
            if writer is None:
                writer = ShardWriter(state.piece_path(task.block, len(shards)))
            writer.add(sample_key(task.prefix, task.first_position + offset), members)
            counts[cls] += 1
        if writer is not None:
            shards.append(writer.close())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    record = BlockRecord(task.block, shards, skipped, counts)
    state.save_record(record)
    return record
