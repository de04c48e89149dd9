"""Report: `python launch/report.py RUN [RUN ...] [--out FILE]` writes one self-contained HTML page.

Training loss, learning rate, throughput and MFU, every evaluator's curve over steps (the paper's Figure 2/4 style
5-shot curve when a few-shot evaluator ran), the final metrics table and the latest token-mixing weight pictures;
several runs share each chart's axes, one colour per run. Default output: RUN/report.html for one run, else
report.html beside the first run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python launch/x.py` puts launch/ on sys.path

from launch.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs (with tensorboard/ and/or metrics.json)")
    parser.add_argument("--out", default=None, help="the HTML file (default: RUN/report.html, or beside the runs)")
    parser.add_argument("--title", default=None, help="the page's title (default: the runs' names)")
    args = parser.parse_args(argv)
    import logging

    from fileio.atomic import atomic_write_text
    from pretrain.report.html import render
    from pretrain.report.runs import read_run

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader's INFO lines are no news here
    runs = [read_run(path) for path in args.runs]
    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first / "report.html" if len(runs) == 1 else first.parent / "report.html")
    atomic_write_text(out, render(runs, args.title or ", ".join(r.name for r in runs)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
