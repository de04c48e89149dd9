"""Command line: ``python -m data_prep build ...``, ``verify OUT [--decode]`` and ``index SHARDS...``.

User mistakes and bad input print one line on stderr and exit 2; ``verify`` exits 1 when the shards do not
match their manifest.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

from data_prep.build import build
from data_prep.errors import DataPrepError
from data_prep.index import write_index
from data_prep.manifest import MANIFEST_NAME, read_manifest
from data_prep.options import LAYOUTS, BuildOptions
from data_prep.verify import verify

EXAMPLES = """\
examples:
  python -m data_prep build --layout digits --split train --out data/digits/train
  python -m data_prep build --layout folders --source /data/imagenet/train --classes imagenet_wnids.txt \\
      --out shards/in1k-train --resize-shorter 256 --workers 16
  python -m data_prep build --layout imagenet-val --source /data/imagenet/val --labels LOC_val_solution.csv \\
      --classes imagenet_wnids.txt --out shards/in1k-val --resize-shorter 256
  python -m data_prep build --layout list --source /data/pets --list /data/pets/train.tsv --out shards/pets
  python -m data_prep verify shards/in1k-train --decode
  python -m data_prep index /shards/laion/ /shards/extra-000000.tar   # offset indices for shards made elsewhere
"""
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def byte_count(text: str) -> int:
    """'1000000', '500MB', '1GB', '1.5G' -> bytes (decimal units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a byte count like 1000000, 500MB or 1GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _add_build_args(p: argparse.ArgumentParser) -> None:
    d = BuildOptions.__dataclass_fields__
    p.add_argument("--layout", required=True, choices=LAYOUTS, help="source layout, e.g. --layout folders")
    p.add_argument(
        "--source",
        metavar="SRC",
        help="source root SRC (ignored for digits), e.g. --source /data/imagenet/train",
    )
    p.add_argument(
        "--out", required=True, help="output folder for shards and manifest, e.g. --out shards/train"
    )
    p.add_argument(
        "--classes",
        dest="classes_file",
        metavar="FILE",
        help="class names in index order, one per line (first field of each line), so that train and "
        "val share one index, e.g. --classes imagenet_wnids.txt",
    )
    p.add_argument(
        "--labels",
        dest="labels_file",
        metavar="FILE",
        help="imagenet-val labels: the devkit ground truth (needs --synsets) or an "
        "ImageId,PredictionString CSV, e.g. --labels LOC_val_solution.csv",
    )
    p.add_argument(
        "--synsets",
        dest="synsets_file",
        metavar="FILE",
        help="wnids indexed by the ground truth's 1-based ids, in the devkit's ILSVRC2012_ID order "
        "('wnid description' lines accepted), e.g. --synsets ilsvrc2012_synsets.txt",
    )
    p.add_argument(
        "--list",
        dest="list_file",
        metavar="FILE",
        help="list layout: lines 'path<TAB>label' or 'path,label', paths relative to SRC, label a "
        "class name or index, e.g. --list train.tsv",
    )
    p.add_argument(
        "--split",
        choices=("train", "val"),
        default=d["split"].default,
        help="digits: which split to write (default train), e.g. --split val",
    )
    p.add_argument(
        "--val-fraction",
        metavar="F",
        type=float,
        default=d["val_fraction"].default,
        help="digits: per-class share held out for val (default 0.2), e.g. --val-fraction 0.25",
    )
    p.add_argument(
        "--image-size",
        metavar="N",
        type=int,
        default=d["image_size"].default,
        help="digits: rendered side in pixels (default 32), e.g. --image-size 64",
    )
    p.add_argument(
        "--resize-shorter",
        type=int,
        metavar="N",
        help="re-encode as RGB JPEG, downscaling so the shorter side is N (smaller images keep their "
        "size); default: keep the original bytes, e.g. --resize-shorter 256",
    )
    p.add_argument(
        "--quality",
        metavar="Q",
        type=int,
        default=d["quality"].default,
        help="JPEG quality with --resize-shorter (default 90), e.g. --quality 95",
    )
    p.add_argument(
        "--shard-max-samples",
        metavar="N",
        type=int,
        default=d["shard_max_samples"].default,
        help="samples per shard at most (default 10000), e.g. --shard-max-samples 5000",
    )
    p.add_argument(
        "--shard-max-bytes",
        metavar="BYTES",
        type=byte_count,
        default=d["shard_max_bytes"].default,
        help="bytes per shard at most (default 1GB; a larger single image gets its own shard), "
        "e.g. --shard-max-bytes 500MB",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=d["workers"].default,
        help="worker processes (default 1); the shards do not depend on it, e.g. --workers 16",
    )
    p.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=d["seed"].default,
        help="seed of the global shuffle (default 0), e.g. --seed 1",
    )
    p.add_argument(
        "--prefix",
        metavar="NAME",
        help="shard and key prefix (default: the split for digits, 'val' for imagenet-val, the list "
        "file's name for list, else 'train'), e.g. --prefix in1k-train",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier build in OUT (only files data_prep wrote), e.g. --overwrite",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted build in OUT, keeping its intact shards, e.g. --resume",
    )
    p.add_argument(
        "--max-skipped-frac",
        metavar="F",
        type=float,
        default=d["max_skipped_frac"].default,
        help="fail (exit 2, no manifest) if more than this share of images is unreadable "
        "(default 0.01), e.g. --max-skipped-frac 0.05",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m data_prep`` parser with its two commands."""
    parser = _Parser(
        prog="python -m data_prep",
        description="Turn image folders into class-mixed WebDataset tar shards with a manifest; verify them.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_build_args(
        commands.add_parser(
            "build",
            help="turn an image source into shuffled tar shards + manifest.json",
            epilog=EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    check = commands.add_parser(
        "verify", help="re-read the shards of OUT and check them against its manifest"
    )
    check.add_argument("out", metavar="OUT", help="a build's output folder, e.g. shards/train")
    check.add_argument("--decode", action="store_true", help="also decode every image, e.g. --decode")
    index = commands.add_parser(
        "index", help="write the sample-offset index SHARD.tar.idx beside each shard (for shards made elsewhere)"
    )
    index.add_argument(
        "shards", metavar="SHARDS", nargs="+",
        help="tar shards, or folders (a build's manifest shards, else every *.tar), e.g. /shards/in1k-train",
    )
    return parser


def shard_paths(targets: list[str]) -> list[str]:
    """The local shard files named by ``targets``: files as given, folders by their manifest or their *.tar."""
    paths = []
    for target in targets:
        if not os.path.isdir(target):
            if not os.path.isfile(target):
                raise DataPrepError(f"no such shard or folder: {target}")
            paths.append(target)
        elif os.path.isfile(os.path.join(target, MANIFEST_NAME)):
            paths += [os.path.join(target, s["name"]) for s in read_manifest(target)["shards"]]
        else:
            found = sorted(glob.glob(os.path.join(target, "*.tar")))
            if not found:
                raise DataPrepError(f"{target} holds no manifest and no *.tar shard")
            paths += found
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status (0 ok, 1 verify found problems, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            result = verify(args.out, decode=args.decode)
            print(result.summary())
            return 0 if result.ok else 1
        if args.command == "index":
            paths = shard_paths(args.shards)
            total = sum(len(write_index(path)) for path in paths)
            print(f"indexed {total} samples in {len(paths)} shard(s)")
            return 0
        fields = BuildOptions.__dataclass_fields__
        build(BuildOptions(**{k: v for k, v in vars(args).items() if k in fields}))
        return 0
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to finish the build", file=sys.stderr)
        return 130
