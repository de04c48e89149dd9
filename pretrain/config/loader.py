"""Strict YAML -> typed dataclass loading, dotted `--set` overrides, and writing the resolved config.

Unknown keys name their full path and the closest valid key; wrong types name the key, the value and the expected
type; a key written twice in one mapping names its path and both lines (plain YAML keeps the last silently). Every
dataclass section may define `validate(prefix)` for its value ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fileio.atomic import atomic_write_text
from pretrain.config.errors import ConfigError

T = TypeVar("T")
MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that holds the same key twice (its dotted path and both lines are in the message)."""


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` whose mappings refuse a repeated key instead of keeping the last one.

    Keys brought in by a merge key (`<<: *anchor`) may be overridden, as YAML intends; only keys written twice in
    the same mapping are errors. Each node's dotted path is recorded as its parent is constructed, so the message
    names `optim.lr`, not just `lr`.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        where = self._paths.get(id(node), "")
        first: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            path = _join(where, str(key))
            try:
                earlier = first.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if earlier is not None:
                here, there = f"line {mark.line + 1}", f"line {earlier.line + 1}"
                if earlier.line == mark.line:  # a flow mapping on one line
                    here, there = f"{here} column {mark.column + 1}", f"{there} column {earlier.column + 1}"
                raise DuplicateKeyError(f"duplicate key `{path}` at {here} (first at {there}); each key may "
                                        "appear once in a mapping")
            first[key] = mark
            self._paths[id(value_node)] = path
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        where = self._paths.get(id(node), "")
        for i, child in enumerate(node.value):
            self._paths[id(child)] = f"{where}[{i}]"
        return super().construct_sequence(node, deep=deep)


def read_yaml(text: str) -> Any:
    """`yaml.safe_load` that raises DuplicateKeyError for a key written twice in one mapping."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | os.PathLike, schema: type[T], overrides: Iterable[str] = (),
                complete: Callable[[dict[str, Any]], None] | None = None) -> T:
    """Read a YAML file into `schema`, apply `key=value` overrides, validate every section.

    `complete` may fill in the raw mapping (overrides applied) before it is typed: what the config leaves out and
    something else records (fine-tuning takes the model from its init checkpoint, `finetune.init_model`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = read_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_path(raw, key, value, schema)
    if complete is not None:
        complete(raw)
    cfg = _build(schema, raw, prefix="")
    validate(cfg)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is read as YAML (so `3e-3`, `true`, `[1, 2]` work)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=3e-3")
    try:
        value = read_yaml(text) if text.strip() else ""
    except DuplicateKeyError as err:
        raise ConfigError(f"--set {item!r}: {err}") from None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def validate(cfg: Any, prefix: str = "") -> None:
    """Run `validate(prefix)` of every dataclass section, depth first."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, _join(prefix, f.name))
        elif isinstance(value, dict):
            for name, entry in value.items():
                if dataclasses.is_dataclass(entry):
                    validate(entry, _join(prefix, f"{f.name}.{name}"))
    if hasattr(cfg, "validate"):
        cfg.validate(prefix)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config, suitable for YAML and JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a schema (sections and leaves)."""
    keys = []
    for name, hint in _hints(schema).items():
        key = _join(prefix, name)
        keys.append(key)
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, key))
    return keys


def _hints(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown(key: str, schema: type) -> ConfigError:
    close = (_elsewhere(key, schema, cutoff=1.0) or difflib.get_close_matches(key, all_keys(schema), n=1, cutoff=0.6)
             or _elsewhere(key, schema))
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return ConfigError(f"`{key}`: unknown key{hint}")


def _elsewhere(key: str, schema: type, cutoff: float = 0.8) -> list[str]:
    """The key of another section whose last part is closest to `key`'s (`optim.warmup_step` ->
    `schedule.warmup_steps`): a key put in the wrong section. `cutoff` 1.0: the same last part only."""
    leaves: dict[str, str] = {}
    for full in all_keys(schema):
        leaves.setdefault(full.rsplit(".", 1)[-1], full)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=cutoff)
    return [leaves[close[0]]] if close else []


def _set_path(raw: dict, key: str, value: Any, schema: type) -> None:
    """Put an override into the raw mapping, checking the path against the schema as far as it is typed."""
    parts = key.split(".")
    node_type: Any = schema
    node = raw
    in_entry = False  # below a named entry of a `dict[str, Section]` field, whose names all_keys cannot list
    for depth, part in enumerate(parts):
        hints = _hints(node_type) if dataclasses.is_dataclass(node_type) else None
        if hints is not None and part not in hints:
            if node_type is schema or not in_entry:
                raise _unknown(".".join(parts[: depth + 1]), schema)
            close = difflib.get_close_matches(part, list(hints), n=1, cutoff=0.6)
            hint = f"; did you mean `{_join('.'.join(parts[:depth]), close[0])}`?" if close else ""
            raise ConfigError(f"`{'.'.join(parts[: depth + 1])}`: unknown key{hint}")
        in_entry = in_entry or (hints is None and node_type is not dict)
        if depth == len(parts) - 1:
            node[part] = value
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{'.'.join(parts[: depth + 1])}` is not a section; cannot set `{key}`")
        node = child
        node_type = hints[part] if hints is not None else _entry_type(node_type)


def _entry_type(hint: Any) -> Any:
    """The value type of a `dict[str, Section]` field (`dict` for a free mapping)."""
    args = typing.get_args(hint)
    return args[1] if typing.get_origin(hint) is dict and len(args) == 2 else dict


def _build(schema: type[T], raw: Mapping[str, Any], prefix: str, root: type | None = None) -> T:
    """`schema` from its raw mapping; an unknown key names the closest key of its section, or else the closest of
    any section of `root` (the whole config's schema)."""
    root = root or schema
    hints = _hints(schema)
    for name in raw:
        if name not in hints:
            key = _join(prefix, str(name))
            close = _elsewhere(key, root, cutoff=1.0) or [
                _join(prefix, c) for c in difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.6)]
            close = close or _elsewhere(key, root)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"`{key}`: unknown key{hint}")
    kwargs = {name: _coerce(raw[name], hint, _join(prefix, name), root) for name, hint in hints.items() if name in raw}
    return schema(**kwargs)


def _coerce(value: Any, hint: Any, key: str, root: type | None = None) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{key}`: expected a section (mapping), got {value!r}")
        return _build(hint, value, key, root)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key, root)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"`{key}`: {value!r} is not allowed; expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        (arg,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}`: {value!r} is not allowed; expected a list")
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{key}`: {value!r} is not allowed; expected a mapping")
        entry = _entry_type(hint)
        if dataclasses.is_dataclass(entry):
            return {str(name): _coerce(v, entry, _join(key, str(name)), root) for name, v in value.items()}
        return dict(value)
    return _scalar(value, hint, key)


def _scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}`: {value!r} is not allowed; expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}`: {value!r} is not allowed; expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"`{key}`: {value!r} is not allowed; expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"`{key}`: {value!r} is not allowed; expected a string")
    raise TypeError(f"config type {hint!r} of `{key}` is not supported")
