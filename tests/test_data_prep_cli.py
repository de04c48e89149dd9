"""``python -m data_prep``: the digits demo end to end, one-line errors with exit 2, documented options."""

import dataclasses
import os
import subprocess
import sys

import pytest

from data_prep.cli import build_parser, byte_count, main
from data_prep.options import BuildOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_digits_build_and_verify_in_a_subprocess(tmp_path):
    out = str(tmp_path / "val")
    built = _run(
        "build", "--layout", "digits", "--source", "digits", "--split", "val", "--out", out, "--workers", "2"
    )
    assert built.returncode == 0, built.stderr
    assert "wrote 359 samples of 10 classes in 1 shard(s), " in built.stdout
    checked = _run("verify", out, "--decode")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines()[-1] == "OK"


def test_missing_labels_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "a.JPEG").write_bytes(b"x")
    labels = tmp_path / "nope.txt"
    result = _run(
        "build",
        "--layout",
        "imagenet-val",
        "--source",
        str(tmp_path / "val"),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "out"),
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        f"error: labels file not found: {labels}\n",
    )


def test_bad_argument_is_one_line_exit_2():
    result = _run("build", "--layout", "digits", "--out", "x", "--workers", "many")
    assert result.returncode == 2
    assert result.stderr == (
        "error: argument --workers: invalid int value: 'many' (see python -m data_prep build --help)\n"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layout", "folders", "--source", "{tmp}/none"], "source folder not found: {tmp}/none"),
        (["--layout", "folders", "--source", "{tmp}/flat"], "{tmp}/flat holds no class folders (expected "),
        (["--layout", "folders", "--source", "{tmp}/flat", "--labels", "x"], "--labels is only used with"),
        (
            ["--layout", "digits", "--prefix", "a.b"],
            "--prefix 'a.b' may only hold letters, digits, '_' and '-'",
        ),
        (["--layout", "digits", "--quality", "0"], "--quality must be in 1..100, not 0"),
        (["--layout", "digits", "--overwrite", "--resume"], "--overwrite and --resume exclude each other"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    argv = ["build", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path)) and err.count("\n") == 1


def test_help_documents_every_option_with_an_example():
    build_help = build_parser()._subparsers._group_actions[0].choices["build"].format_help()
    flags = [f"--{f.name.removesuffix('_file').replace('_', '-')}" for f in dataclasses.fields(BuildOptions)]
    for flag in flags:
        assert flag in build_help, flag
    assert build_help.count("e.g.") >= len(flags)


def test_byte_counts():
    assert [byte_count(t) for t in ("123", "500MB", "1GB", "1.5g", "64k")] == [
        123,
        500 * 10**6,
        10**9,
        1.5e9,
        64000,
    ]
