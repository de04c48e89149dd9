"""Building shards: source -> shuffled plan -> blocks (in worker processes) -> numbered shards -> manifest.

Each worker encodes and writes whole blocks (see :mod:`data_prep.plan`), so ``--workers`` changes the speed,
never the bytes. ``--resume`` keeps every block whose shards match their records and builds the rest; the
result equals an uninterrupted build. Too many unreadable images stop the build with no manifest written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from data_prep import outdir
from data_prep.errors import DataPrepError
from data_prep.index import write_index
from data_prep.manifest import make_manifest, write_manifest
from data_prep.options import BuildOptions
from data_prep.plan import Plan, difference, make_plan
from data_prep.sources import Source, folders_source, imagenet_val_source, list_source
from data_prep.state import BlockRecord, BuildState
from data_prep.worker import BlockTask, run_block
from data_prep.workers import run_tasks


def load_source(options: BuildOptions) -> Source:
    """The samples and classes of the layout named by ``options.layout``."""
    if options.layout == "digits":
        from data_prep.digits import digits_source

        return digits_source(options.split, options.val_fraction, options.image_size)
    if options.layout == "folders":
        return folders_source(options.source, options.classes_file)
    if options.layout == "imagenet-val":
        return imagenet_val_source(
            options.source, options.labels_file, options.synsets_file, options.classes_file
        )
    return list_source(options.source, options.list_file, options.classes_file)


def _tasks(plan: Plan, source: Source, options: BuildOptions, blocks: list[int]) -> list[BlockTask]:
    tasks = []
    for b in blocks:
        span = plan.block(b)
        tasks.append(
            BlockTask(
                block=b,
                first_position=span.start,
                items=plan.items[span.start : span.stop],
                classes=plan.classes,
                reader=source.reader,
                prefix=plan.prefix,
                resize_shorter=options.resize_shorter,
                quality=options.quality,
                max_bytes=options.shard_max_bytes,
                out=options.out,
            )
        )
    return tasks


def _check_skipped(skipped: list[dict], total: int, max_frac: float) -> None:
    if skipped and len(skipped) > max_frac * total:
        first = min(skipped, key=lambda s: s["path"])
        raise DataPrepError(
            f"{len(skipped)} of {total} images skipped ({len(skipped) / total:.1%} > --max-skipped-frac "
            f"{max_frac}), e.g. {first['path']}: {first['reason']}; no manifest written (fix the source, or "
            "raise the limit and --resume)"
        )


def _start(plan: Plan, options: BuildOptions) -> tuple[BuildState, dict[int, BlockRecord]]:
    """Prepare the output folder; its state, and the blocks an interrupted build finished (--resume)."""
    state = outdir.prepare(options.out, options.overwrite, options.resume)
    earlier = state.load_plan()
    if earlier is None:
        state.create(plan.record())
        return state, {}
    changed = difference(earlier, plan.record())
    if changed:
        raise DataPrepError(f"cannot resume {options.out}: {changed}; use --overwrite to build it again")
    return state, outdir.take_back(options.out, state, plan.num_blocks, plan.prefix)


def _finish_blocks(
    plan: Plan,
    source: Source,
    options: BuildOptions,
    done: dict[int, BlockRecord],
    log: Callable[[str], None],
) -> list[BlockRecord]:
    """Build the blocks not in ``done``; all block records in order. Stops early on too many skipped."""
    todo = [b for b in range(plan.num_blocks) if b not in done]
    total = len(plan.items)
    log(
        f"{total} images, {len(plan.classes)} classes, {plan.num_blocks} blocks of up to {plan.block_size}; "
        f"{len(done)} blocks kept, {len(todo)} to build with {options.workers} worker(s)"
    )
    skipped = [s for record in done.values() for s in record.skipped]
    start, processed = time.perf_counter(), 0
    records = run_tasks(run_block, _tasks(plan, source, options, todo), options.workers)
    try:
        for record in records:
            done[record.block] = record
            skipped += record.skipped
            _check_skipped(skipped, total, options.max_skipped_frac)
            processed += len(plan.block(record.block))
            rate = processed / max(time.perf_counter() - start, 1e-9)
            log(
                f"  block {record.block} done ({len(done)}/{plan.num_blocks}), "
                f"{len(skipped)} skipped so far, {rate:.0f} images/s"
            )
    finally:
        records.close()  # on an error, stops the worker processes at once
    _check_skipped(skipped, total, options.max_skipped_frac)
    if not any(record.shards for record in done.values()):
        raise DataPrepError(f"none of the {total} images could be read; no manifest written")
    return [done[b] for b in range(plan.num_blocks)]


def build(options: BuildOptions, log: Callable[[str], None] = print) -> dict:
    """Build the shards and manifest that ``options`` describe; returns the manifest.

    Raises :class:`DataPrepError` (one line) for bad options, unusable input or too many skipped images.
    """
    options = options.checked()
    source = load_source(options)
    plan = make_plan(source, options)
    state, done = _start(plan, options)
    records = _finish_blocks(plan, source, options, done, log)
    skipped = sorted((s for record in records for s in record.skipped), key=lambda s: s["path"])
    shards = outdir.place(options.out, state, records, plan.prefix)
    for shard in shards:  # before the manifest: a finished build has its indices
        write_index(os.path.join(options.out, shard["name"]))
    counts = [sum(record.class_counts[c] for record in records) for c in range(len(plan.classes))]
    manifest = make_manifest(options.layout, options.recorded(), plan.classes, shards, skipped, counts)
    write_manifest(options.out, manifest)
    _summary(manifest, options.out, log)
    return manifest


def _summary(manifest: dict, out: str, log: Callable[[str], None]) -> None:
    size = sum(s["bytes"] for s in manifest["shards"])
    log(
        f"wrote {manifest['num_samples']} samples of {manifest['num_classes']} classes in "
        f"{len(manifest['shards'])} shard(s), {size / 1e6:.1f} MB, to {out}"
    )
    skipped = manifest["skipped"]
    if skipped:
        log(f"skipped {len(skipped)} file(s) (all listed in manifest.json 'skipped'):")
        for s in skipped[:5]:
            log(f"  {s['path']}: {s['reason']}")
