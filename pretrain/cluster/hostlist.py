"""Slurm's compressed host and task lists, expanded without Slurm.

Slurm writes node lists like ``gpu[001-004,010],cpu7`` and tasks-per-node lists like ``4(x2),1``. On a Slurm
node ``scontrol show hostnames`` expands the former; :func:`expand_nodelist` uses it when it is on PATH and
otherwise falls back to :func:`parse_nodelist`, our own parser, so the same code runs in tests and on login
nodes.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_REPEAT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested '[' in Slurm host list {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm host list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in Slurm host list {text!r}")
    parts.append(text[start:])
    return parts


def _expand_bracket(body: str, whole: str) -> list[str]:
    """``001-003,7`` -> ``['001', '002', '003', '7']``, keeping the zero padding of the lower bound."""
    values = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if match is None:
            raise ValueError(f"bad range {item!r} in Slurm host list {whole!r}")
        lo, hi = match.group(1), match.group(2)
        if hi is None:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in Slurm host list {whole!r}")
        width = len(lo)
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def _expand_host(pattern: str, whole: str) -> list[str]:
    """Expand one host pattern; several bracket groups (``r[1-2]n[1-2]``) give their cartesian product."""
    hosts = [""]
    rest = pattern
    while rest:
        open_at = rest.find("[")
        if open_at < 0:
            hosts = [h + rest for h in hosts]
            break
        close_at = rest.index("]", open_at)
        prefix, body = rest[:open_at], rest[open_at + 1 : close_at]
        hosts = [h + prefix + value for h in hosts for value in _expand_bracket(body, whole)]
        rest = rest[close_at + 1 :]
    return hosts


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list expression (``gpu[001-004,010],cpu7``) into host names, in order."""
    text = nodelist.strip()
    if not text:
        raise ValueError("empty Slurm host list")
    hosts = []
    for part in _split_top_level(text):
        if not part.strip():
            raise ValueError(f"empty entry in Slurm host list {nodelist!r}")
        hosts.extend(_expand_host(part.strip(), nodelist))
    return hosts


def expand_nodelist(nodelist: str, path: str | None = None) -> list[str]:
    """Host names of a Slurm host list: ``scontrol show hostnames`` if it is on ``path``, else our parser."""
    scontrol = shutil.which("scontrol", path=path)
    if scontrol is not None:
        result = subprocess.run(
            [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        hosts = result.stdout.split()
        if result.returncode == 0 and hosts:
            return hosts
    return parse_nodelist(nodelist)


def parse_tasks_per_node(spec: str) -> list[int]:
    """Expand Slurm's tasks-per-node list (``4(x2),1``) into one count per node (``[4, 4, 1]``)."""
    counts = []
    for item in spec.split(","):
        match = _REPEAT.match(item.strip())
        if match is None:
            raise ValueError(f"bad Slurm tasks-per-node entry {item!r} in {spec!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts
