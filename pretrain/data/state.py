"""The resumable data state: what a rank saves, how ranks' states merge, what a resume may accept.

A state is a JSON-friendly dict:
    {"version": 2, "layout": {shards, subset, seed, num_samples, virtual_ranks, workers, num_streams, micro_batch,
                              shuffle_buffer},
     "step": next step to run, "streams": {"<stream id>": StreamState as dict, ...}}
A rank's state holds its own streams; `merge_states` unions the states of all ranks. A loader takes a
merged state and picks its own streams, so a resume may change world size and accumulation as long as
V (virtual ranks) and W (workers) stay the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .manifest import DataError
from .sample_stream import StreamState
from .streams import StreamLayout

VERSION = 2


def layout_fields(layout: StreamLayout) -> dict[str, int | str]:
    """What a state records of the layout: every setting the exact position depends on; a resume must match all."""
    return {
        "shards": layout.shards,
        "subset": layout.subset,
        "seed": layout.seed,
        "num_samples": layout.num_samples,
        "virtual_ranks": layout.virtual_ranks,
        "workers": layout.workers,
        "num_streams": layout.num_streams,
        "micro_batch": layout.micro_batch,
        "shuffle_buffer": layout.shuffle_buffer,
    }


def make_state(layout: StreamLayout, step: int, streams: Mapping[int, Mapping[str, int]]) -> dict:
    """A state at `step` (the next step to run) holding `streams` (stream id -> StreamState dict)."""
    return {
        "version": VERSION,
        "layout": layout_fields(layout),
        "step": step,
        "streams": {str(s): dict(v) for s, v in sorted(streams.items())},
    }


_HINTS = {
    "subset": " (data.subset_fraction / data.subset_seed)",
    "virtual_ranks": " (V = global batch / micro_batch)",
    "workers": " (loader workers per rank)",
    "num_samples": " (the dataset changed)",
    "shards": " (the shard list changed: names, sizes or checksums of data.train)",
    "seed": " (train.seed)",
    "shuffle_buffer": " (data.shuffle_buffer)",
    "micro_batch": " (train.micro_batch)",
}


def check_state(state: Mapping, layout: StreamLayout) -> None:
    """Raise DataError unless `state` was saved with this layout."""
    if not isinstance(state, Mapping) or state.get("version") != VERSION or "layout" not in state:
        saved = state.get("version") if isinstance(state, Mapping) else None
        raise DataError(f"cannot resume the data order: the data state has version {saved}, this code reads version "
                        f"{VERSION} (resume with the code that saved it, or start a new run with --run-dir)")
    for key, value in layout_fields(layout).items():
        saved = state["layout"].get(key)
        if saved != value:
            raise DataError(
                f"cannot resume the data order: it was saved with {key}={saved}{_HINTS.get(key, '')}, "
                f"this run has {key}={value}"
            )


def stream_states(state: Mapping, stream_ids: Iterable[int]) -> dict[int, StreamState]:
    """The states of `stream_ids`; all must be present (a state merged from all ranks has every stream)."""
    out = {}
    for s in stream_ids:
        entry = state["streams"].get(str(s))
        if entry is None:
            raise DataError(f"the data state lacks stream {s}; pass merge_states() of all ranks' states")
        out[s] = StreamState.from_dict(entry)
    return out


def merge_states(states: Iterable[Mapping]) -> dict:
    """One state from the states of all ranks (same layout and step; streams unioned)."""
    states = list(states)
    if not states:
        raise DataError("merge_states needs at least one state")
    first = states[0]
    merged: dict[str, dict] = {}
    for st in states:
        for key in ("version", "layout", "step"):
            if st.get(key) != first.get(key):
                raise DataError(
                    f"cannot merge data states with different {key}: {first.get(key)} vs {st.get(key)}"
                )
        for sid, entry in st["streams"].items():
            if sid in merged and merged[sid] != entry:
                raise DataError(f"cannot merge data states: stream {sid} differs between ranks")
            merged[sid] = dict(entry)
    return {
        "version": first["version"],
        "layout": dict(first["layout"]),
        "step": first["step"],
        "streams": dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
    }
