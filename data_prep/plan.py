"""The build plan: the globally shuffled sample list, cut into fixed-count blocks, and its fingerprint.

A block is ``shard_max_samples`` consecutive samples of the shuffled list; one worker turns one block into one
shard, or several when ``shard_max_bytes`` is reached first. Blocks depend only on (source listing, seed,
options), never on the number of workers, so any ``--workers`` gives byte-identical shards. The sample at
shuffled position ``i`` gets the key ``{prefix}-{i:09d}`` (skipped samples leave gaps).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from data_prep.options import BuildOptions
from data_prep.sources import Source

PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Shuffled samples, block size, and what the plan file records to check a resume against."""

    options: dict
    classes: list[str]
    items: list[tuple[str, int]]
    block_size: int
    prefix: str

    @property
    def num_blocks(self) -> int:
        return -(-len(self.items) // self.block_size)

    def block(self, b: int) -> range:
        """Positions in the shuffled list that block ``b`` covers."""
        return range(b * self.block_size, min((b + 1) * self.block_size, len(self.items)))

    def record(self) -> dict:
        """The plan file's content: enough to tell whether a resume would build the same thing."""
        return {
            "plan_version": PLAN_VERSION,
            "options": self.options,
            "classes": self.classes,
            "num_items": len(self.items),
            "items_sha256": items_sha256(self.items),
            "block_size": self.block_size,
        }


def sample_key(prefix: str, position: int) -> str:
    """The ``__key__`` of the sample at ``position`` in the shuffled list."""
    return f"{prefix}-{position:09d}"


def items_sha256(items: list[tuple[str, int]]) -> str:
    """A fingerprint of the sample list in order."""
    h = hashlib.sha256()
    for ref, cls in items:
        h.update(f"{ref}\t{cls}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def make_plan(source: Source, options: BuildOptions) -> Plan:
    """Shuffle the source's samples with ``options.seed`` (Python's ``random``, stable across versions)."""
    items = list(source.items)
    random.Random(options.seed).shuffle(items)
    recorded = options.recorded()
    recorded.pop("max_skipped_frac")  # a threshold, not part of the output: may change on resume
    return Plan(recorded, list(source.classes), items, options.shard_max_samples, options.prefix or "")


def difference(old: dict, new: dict) -> str | None:
    """How an earlier plan record differs from a new one, in words; None if they are equal."""
    if old.get("plan_version") != new["plan_version"]:
        return "the plan was written by another version of data_prep"
    for key in sorted(set(old.get("options", {})) | set(new["options"])):
        before, now = old.get("options", {}).get(key), new["options"].get(key)
        if before != now:
            return f"option {key} was {before!r}, now {now!r}"
    if old.get("classes") != new["classes"]:
        return "the class list changed"
    if old.get("items_sha256") != new["items_sha256"]:
        return f"the source changed ({old.get('num_items')} images then, {new['num_items']} now)"
    if old != new:
        return "the plan file differs"
    return None
