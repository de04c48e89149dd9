"""The report page: the runs (colour legend), training curves, the evaluators' curves, the final table and the
weight pictures, in one HTML file with everything inline (SVG charts, PNGs as data URIs)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape

from pretrain.report.runs import RunData
from pretrain.report.svg import COLORS, line_chart

TRAINING = (("train/loss", "training loss"), ("train/lr", "learning rate"),
            ("train/images_per_sec", "throughput (images/s)"), ("train/mfu", "MFU"))
STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1360px}svg.chart{margin:4px;font-size:11px}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px}"
         "img.weights{image-rendering:pixelated;max-width:100%}.swatch{display:inline-block;width:14px;height:4px;"
         "margin-right:6px;vertical-align:middle}")
# Marks the page once the browser has laid it out: every chart has a size and every picture decoded (the tests
# open the report in headless Chromium and read this attribute back).
CHECK = ("<script>window.addEventListener('load',()=>{const c=[...document.querySelectorAll('svg.chart')]"
         ".filter(s=>s.getBBox().width>0).length;const i=[...document.querySelectorAll('img')]"
         ".filter(m=>m.complete&&m.naturalWidth>0).length;document.body.dataset.rendered=c+' charts, '+i+' images';"
         "});</script>")


def eval_tags(runs: Sequence[RunData]) -> list[str]:
    """The evaluators' scalar tags of any run (not their `best/` copies), in a stable order."""
    return sorted({t for r in runs for t in r.scalars if t.startswith("eval/")})


def final_row(run: RunData) -> dict[str, str]:
    """The run's final figures from metrics.json: model, resolution, step, top-1/top-5 and few-shot means."""
    m, model = run.metrics, run.config.get("model", {})
    row = {"run": run.name, "model": str(model.get("name", "")), "px": str(model.get("img_size", "")),
           "step": str(m.get("step", ""))}
    for key in ("top1", "top5"):
        row[key] = f"{m[key]:.2%}" if key in m else ""
    for shots, res in m.get("fewshot", {}).items():
        row[shots] = f"{res['mean']:.2%}"
    return row


def table(runs: Sequence[RunData]) -> str:
    rows = [final_row(r) for r in runs]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(row.get(c, ''))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pictures(runs: Sequence[RunData]) -> str:
    out = []
    for run in runs:
        for tag, png in sorted(run.images.items()):
            data = base64.b64encode(png).decode()
            out.append(f'<figure><img class="weights" alt="{escape(run.name)} {escape(tag)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{escape(run.name)}: {escape(tag)} '
                       "(latest)</figcaption></figure>")
    return "".join(out) or "<p>no weight pictures logged</p>"


def render(runs: Sequence[RunData], title: str = "runs") -> str:
    """The whole page for `runs`, each in its own colour on every chart."""
    colors = {r.name: COLORS[i % len(COLORS)] for i, r in enumerate(runs)}
    legend = "".join(f'<li><span class="swatch" style="background:{colors[r.name]}"></span>{escape(r.name)} '
                     f"<small>({escape(str(r.path))})</small></li>" for r in runs)

    def charts(tags: Sequence[tuple[str, str]]) -> str:
        return "".join(line_chart(label, {r.name: r.scalars[tag] for r in runs if tag in r.scalars},
                                  colors=colors) for tag, label in tags)

    evals = [(tag, tag.removeprefix("eval/")) for tag in eval_tags(runs)]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><ul>{legend}</ul>"
            f"<h2>Training</h2>{charts(TRAINING) or '<p>no training scalars</p>'}"
            f"<h2>Evaluations</h2>{charts(evals) or '<p>no evaluations</p>'}"
            f"<h2>Final metrics</h2>{table(runs)}<h2>Token-mixing weights</h2>{pictures(runs)}{CHECK}</body></html>")
