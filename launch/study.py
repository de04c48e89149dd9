"""Run a study: `python launch/study.py --study configs/studies/permutation.yaml [--ranks 2] [--only ARM ...]`.

A study YAML names arms, each a pretraining config plus `--set` overrides. Every arm is pretrained (resuming a
finished or interrupted run), then evaluated on `data.val` (exact top-1/top-5 and, by default, few-shot linear
evaluation) with the study's `eval.set` overrides; `runs/studies/<name>/results.md` (and `.json`) tabulate the
metrics, with one column per config key whose value differs between arms.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python launch/x.py` puts launch/ on sys.path

import yaml

from fileio.atomic import atomic_write_text
from launch.cli import run_main
from launch.local import DIGITS, ROOT, build_digits, distributed, sh
from pretrain.config import ConfigError, load_config
from pretrain.config.schema import require

ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ArmConfig:
    """One arm: a pretraining config and its overrides."""

    name: str = ""
    config: str = ""
    set: list[str] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        require(bool(ARM_NAME.match(self.name)), f"{prefix}.name", self.name, "letters, digits, '.', '_' or '-'")
        require((ROOT / self.config).is_file(), f"{prefix}.config", self.config,
                "a config file (relative to the repository root)")


@dataclass
class StudyEvalConfig:
    """How every arm is evaluated after pretraining."""

    set: list[str] = field(default_factory=list)
    fewshot: bool = True


@dataclass
class StudyConfig:
    """A study: arms run in order, each pretrained then evaluated."""

    name: str = ""
    description: str = ""
    build_digits: bool = False
    set: list[str] = field(default_factory=list)
    eval: StudyEvalConfig = field(default_factory=StudyEvalConfig)
    arms: list[ArmConfig] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        require(bool(ARM_NAME.match(self.name)), "name", self.name, "letters, digits, '.', '_' or '-'")
        require(bool(self.arms), "arms", self.arms, "a non-empty list of arms")
        for i, arm in enumerate(self.arms):
            arm.validate(f"arms[{i}]")
        names = [arm.name for arm in self.arms]
        require(len(set(names)) == len(names), "arms", names, "unique arm names")


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML (unknown keys name the closest valid one)."""
    return load_config(path, StudyConfig)


def set_option(overrides: list[str]) -> list[str]:
    """`--set k=v ...` for the entry points, or nothing when there are no overrides."""
    return ["--set", *overrides] if overrides else []


def arm_commands(study: StudyConfig, arm: ArmConfig, out: Path, ranks: int) -> list[list[str]]:
    """The pretraining and evaluation commands of one arm (run from the repository root)."""
    run_dir = out / arm.name
    overrides = [*study.set, *arm.set]
    pretrain = distributed("launch/pretrain.py", ranks, "--config", arm.config, "--run-dir", str(run_dir),
                           "--resume", "auto", *set_option(overrides))
    evaluate = distributed("launch/evaluate.py", ranks, "--config", arm.config, "--checkpoint", str(run_dir),
                           "--run-dir", str(run_dir / "eval"), *(["--fewshot"] if study.eval.fewshot else []),
                           *set_option([*overrides, *study.eval.set]))
    return [pretrain, evaluate]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def collect(study: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """One row per evaluated arm: its resolved config (flattened) and its evaluation metrics."""
    rows = []
    for arm in study.arms:
        run_dir = out / arm.name
        if not (run_dir / "eval" / "metrics.json").is_file():
            continue
        config = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        rows.append({"arm": arm.name, "config": config, "metrics": metrics})
    return rows


def differing_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Config keys present in every row whose value is not the same in all of them (a key that an older run's
    config lacks would only show its absence)."""
    keys = sorted(set.intersection(*(set(row["config"]) for row in rows)))
    return [k for k in keys if len({json.dumps(row["config"].get(k)) for row in rows}) > 1]


def results_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: arm, differing config keys, top-1, top-5, few-shot means."""
    keys = differing_keys(rows)
    shots = list(rows[0]["metrics"].get("fewshot", {}))
    header = ["arm", *keys, "top-1", "top-5", *(f"{s} linear" for s in shots)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row["metrics"]
        cells = [row["arm"], *(str(row["config"].get(k, "")) for k in keys), f"{m['top1']:.2%}", f"{m['top5']:.2%}",
                 *(f"{m['fewshot'][s]['mean']:.2%}" for s in shots)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(study: StudyConfig, out: Path) -> str:
    """Write results.md and results.json for the study's arms; return the table."""
    rows = collect(study, out)
    if not rows:
        raise ConfigError(f"no arm of study {study.name} has been evaluated in {out} yet")
    table = results_table(rows)
    title = f"# Study {study.name}\n\n{study.description.strip()}\n\n" if study.description else ""
    atomic_write_text(out / "results.md", title + table)
    summary = [{"arm": r["arm"], **{k: r["config"].get(k) for k in differing_keys(rows)},
                "top1": r["metrics"]["top1"], "top5": r["metrics"]["top5"],
                "fewshot": {s: v["mean"] for s, v in r["metrics"].get("fewshot", {}).items()}} for r in rows]
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="study YAML, e.g. configs/studies/permutation.yaml")
    parser.add_argument("--ranks", type=int, default=2, help="CPU or GPU ranks per run (default 2)")
    parser.add_argument("--only", nargs="+", default=None, metavar="ARM", help="run only these arms")
    parser.add_argument("--out", default=None, help="output folder (default: runs/studies/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    out = Path(args.out).resolve() if args.out else ROOT / "runs" / "studies" / study.name
    unknown = sorted(set(args.only or ()) - {arm.name for arm in study.arms})
    if unknown:
        raise ConfigError(f"--only: no arm named {', '.join(unknown)} in {args.study}")
    arms = [arm for arm in study.arms if args.only is None or arm.name in args.only]
    if args.dry_run:
        for arm in arms:
            for cmd in arm_commands(study, arm, out, args.ranks):
                print(" ".join(cmd))
        return 0
    if study.build_digits:
        build_digits(DIGITS)
    for arm in arms:
        for cmd in arm_commands(study, arm, out, args.ranks):
            sh(cmd)
    print(write_results(study, out))
    print(f"results: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
