"""The output folder: refusing or clearing its content, taking back an interrupted build, placing shards.

Only files data_prep writes are ever deleted: ``manifest.json``, ``.data_prep/``, ``*.tmp`` leftovers and
files named like shards (``name-NNNNNN.tar``) and their indices (``.tar.idx``).
Shards are numbered only once every block is done, so until
then they live in the state folder; a resume first moves verified final shards back there, so a crash at any
point leaves a folder that ``--resume`` can finish and that has no manifest unless it is complete.
"""

from __future__ import annotations

import os
import shutil

from data_prep.errors import DataPrepError
from data_prep.index import INDEX_SUFFIX
from data_prep.manifest import MANIFEST_NAME, SHARD_NAME_RE, shard_name
from data_prep.shards import ShardInfo
from data_prep.state import STATE_DIR, BlockRecord, BuildState
from fileio.atomic import is_temp_name, sha256_file


def _ours(name: str) -> bool:
    return (
        name in (MANIFEST_NAME, STATE_DIR)
        or SHARD_NAME_RE.match(name.removesuffix(INDEX_SUFFIX)) is not None
        or is_temp_name(name)
    )


def prepare(out: str, overwrite: bool, resume: bool) -> BuildState:
    """Check (and for --overwrite clear) ``out``; create it if needed. Returns its state folder."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataPrepError(f"--out {out} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    state = BuildState(out)
    entries = sorted(os.listdir(out))
    if not entries:
        return state
    if resume:
        if state.load_plan() is None:
            raise DataPrepError(
                f"{out} holds no interrupted build to resume (no {STATE_DIR}/plan.json); use --overwrite"
            )
        return state
    if not overwrite:
        raise DataPrepError(
            f"{out} is not empty; pass --overwrite to replace its shards, or --resume to finish a build"
        )
    foreign = [name for name in entries if not _ours(name)]
    if foreign:
        raise DataPrepError(
            f"{out} holds files data_prep did not write (e.g. {foreign[0]}); not deleting them"
        )
    for name in entries:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return state


def _intact(path: str, shard: ShardInfo) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) == shard.bytes and sha256_file(path) == shard.sha256


def take_back(out: str, state: BuildState, num_blocks: int, prefix: str) -> dict[int, BlockRecord]:
    """Blocks of an interrupted build whose shards are all intact (size and sha256 as recorded).

    Drops the manifest, moves intact final shards back into the state folder and deletes other final shards
    of this prefix, so that every kept shard sits at its state path; the other blocks will be built again.
    """
    manifest = os.path.join(out, MANIFEST_NAME)
    if os.path.exists(manifest):
        os.remove(manifest)
    state.remove_temporaries()
    kept: dict[int, BlockRecord] = {}
    index: int | None = 0  # final index of the next shard, while all earlier blocks have records
    for block in range(num_blocks):
        record = state.load_record(block)
        if record is None:
            state.discard(block)
            index = None
            continue
        intact = True
        for piece, shard in enumerate(record.shards):
            staged = state.piece_path(block, piece)
            final = os.path.join(out, shard_name(prefix, index + piece)) if index is not None else None
            if final is not None and not os.path.exists(staged) and _intact(final, shard):
                os.replace(final, staged)
            intact = intact and _intact(staged, shard)
        if intact:
            kept[block] = record
        else:
            state.discard(block)
        if index is not None:
            index += len(record.shards)
    for name in os.listdir(out):
        if SHARD_NAME_RE.match(name) and name.startswith(f"{prefix}-"):
            os.remove(os.path.join(out, name))
    return kept


def place(out: str, state: BuildState, records: list[BlockRecord], prefix: str) -> list[dict]:
    """Rename the blocks' shards, in block order, to ``{prefix}-{k:06d}.tar``; return manifest entries."""
    entries = []
    for record in records:
        for piece, shard in enumerate(record.shards):
            name = shard_name(prefix, len(entries))
            os.replace(state.piece_path(record.block, piece), os.path.join(out, name))
            entries.append(
                {"name": name, "num_samples": shard.num_samples, "bytes": shard.bytes, "sha256": shard.sha256}
            )
    return entries
