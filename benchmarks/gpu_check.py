"""One prepared command for a short GPU window: every CUDA figure of the pipeline, each step timed and isolated.

    python benchmarks/gpu_check.py [OUT_DIR] [--dry-run] [--time-limit S] [--work-dir DIR] [--keep-work]

Writes OUT_DIR/gpu_check.log (every step's output, tracebacks included), OUT_DIR/results.md (the table) and
OUT_DIR/results.json; OUT_DIR defaults to runs/gpu_check/. Installs nothing. Each step runs in its own process
with its own time budget (and the whole run has one: --time-limit, 450 s on a GPU); a step that fails or runs
out of time becomes a FAILED row (the reason in its notes, its output in the log) and the next step runs.

 0. the environment (device, driver, CUDA, torch / DeepSpeed / timm versions) and the data: the digits shards
    (launch/local.py build_digits) and JPEG class folders cut and flipped from the sklearn / skimage photos,
    sharded by `python -m data_prep build --layout folders`;
 1. CUDA smoke through the real entry points, one process: demo pretraining (configs/demo.yaml) with a
    checkpoint, `--resume auto` with more steps, the demo fine-tune (configs/finetune/demo.yaml) and
    launch/evaluate.py; accuracies from metrics.json;
 2. training-step throughput of our mixer_b16 (batch 128) and mixer_l16 (batch 64) against timm's MlpMixer with
    the same weights, torch AMP bf16, 224 px, plain AdamW, alternating rounds in one process (benchmarks/
    bench_model.py's step), eager and torch.compile'd alike: img/s, TFLOP/s (3 x mixer_flops_per_image), MFU
    of the bf16 matmul peak measured in the same process (pretrain.telemetry.mfu.measure_peak_flops), ours/timm;
 3. the trainer (pretrain.run.Run, stepped as Run.run steps it) for Mixer-L/16 with the L/16 recipe on the JPEG
    shards at 224 px, ZeRO-1 and ZeRO-3, activation checkpointing off and on: img/s, MFU, data wait, peak
    memory, read back from the run's TensorBoard scalars;
 4. the input pipeline (L/16 recipe augmentation, 224 px) per CPU core with 1 and N workers, and the loader
    cores one GPU needs at the rates measured in steps 2 and 3.

Without a CUDA device, or with --dry-run, the same steps run on the CPU with tiny settings (mixer_s32/s16 at
32-64 px, mixer_demo in the trainer, a few steps, a few dozen photos): tests/test_gpu_check.py runs that, so the
script cannot rot. benchmarks/gpu_check.sh runs it with wheels carried in .whl/ (for a machine that lacks some).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/gpu_check.py` puts benchmarks/ on sys.path, not the root

L16_RECIPE = "configs/mixer_l16.yaml"
DEMO, DEMO_FINETUNE = "configs/demo.yaml", "configs/finetune/demo.yaml"
GIB = 2**30

# (key, header) of the results table; every step fills the columns that apply to it.
COLUMNS = (
    ("step", "step"), ("check", "check"), ("status", "status"), ("s", "s"), ("img_s", "img/s"),
    ("tflops", "TFLOP/s"), ("mfu", "MFU"), ("ratio", "ours/timm"), ("wait", "data wait"),
    ("mem_gib", "peak mem GiB"), ("per_core", "img/s per core"), ("cores", "cores/GPU"), ("top1", "top-1"),
    ("notes", "notes"),
)
STEP_TITLES = {
    "0": "environment and data",
    "1": "CUDA smoke: demo pretrain, resume, fine-tune, evaluate (real entry points)",
    "2": "training-step throughput, ours vs timm MlpMixer, AMP bf16, eager and compiled",
    "3": "trainer (pretrain.run.Run), Mixer-L/16 recipe on JPEG shards, ZeRO-1/3, checkpointing off/on",
    "4": "input pipeline per CPU core, and loader cores per GPU",
}


# --------------------------------------------------------------------------------------------------------------
# Settings: the GPU run and the CPU dry run differ only in sizes and budgets.


@dataclass(frozen=True)
class Settings:
    dry_run: bool
    time_limit: float  # seconds for the whole run
    cores: int
    # step 1: the demo
    pretrain_steps: int = 200
    checkpoint_every: int = 100
    resume_steps: int = 300
    finetune_steps: int = 150
    finetune_fewshot: bool = True  # the fine-tune's own few-shot evaluators (launch/evaluate.py always runs one)
    finetune_img: int = 64  # twice the pretraining's 32 px: the block-diagonal token-mixing expansion
    smoke_warmup: int = 0  # 0: the configs' warmup steps
    smoke_log_every: int = 10
    # step 2: (role, our model name, image size, batch); timm's twin is timm.create_model(name + "_224")
    models: tuple[tuple[str, str, int, int], ...] = (("B/16", "mixer_b16", 224, 128), ("L/16", "mixer_l16", 224, 64))
    rounds: int = 5
    steps_per_round: int = 10
    compile_backend: str = "inductor"
    compile_models: int = 2  # how many of `models` are measured compiled too
    # step 3: the trainer
    trainer_model: str = "mixer_l16"
    trainer_img: int = 224
    trainer_batch: int = 64
    trainer_classes: int = 0  # 0: the recipe's head (21843 classes)
    trainer_steps: int = 45
    trainer_log_every: int = 5
    trainer_skip_windows: int = 2  # the first logging windows hold start-up (loader, kernels)
    trainer_workers: int = 8
    trainer_one_process: bool = False  # False: each configuration in its own process (its own peak memory)
    # the photos
    photos: int = 600
    photo_long_side: int = 500
    photo_shard_samples: int = 100
    # step 4: the loader
    loader_workers: tuple[int, ...] = (1, 8)
    budgets: dict[str, float] = field(default_factory=lambda: {
        "digits": 60, "photos": 90, "pretrain": 90, "resume": 75, "finetune": 90, "evaluate": 60,
        "throughput": 90, "trainer": 60, "trainer-z3": 75, "loader": 60, "compiled": 240})

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def gpu_settings(cores: int, time_limit: float | None) -> Settings:
    # 1,200 photos: every loader stream (one per worker) holds at least one batch of 64 with up to 18 workers
    return Settings(dry_run=False, time_limit=time_limit or 450, cores=cores, photos=1200,
                    trainer_workers=max(1, min(14, cores - 2)), loader_workers=(1, max(2, min(16, cores))))


def dry_settings(cores: int, time_limit: float | None) -> Settings:
    return Settings(
        dry_run=True, time_limit=time_limit or 900, cores=cores,
        pretrain_steps=4, checkpoint_every=2, resume_steps=6, finetune_steps=4, smoke_log_every=2,
        finetune_fewshot=False, finetune_img=32,  # few-shot features of all 1,797 digits: most of its time
        smoke_warmup=2,
        models=(("B/16", "mixer_s32", 64, 4), ("L/16", "mixer_s16", 32, 4)), rounds=2, steps_per_round=1,
        compile_backend="eager",  # dynamo's capture only: inductor's C++ builds take minutes on a 2-core CPU
        compile_models=1,
        trainer_model="mixer_demo", trainer_img=32, trainer_batch=8, trainer_classes=10, trainer_steps=4,
        trainer_log_every=2, trainer_skip_windows=1, trainer_workers=1, trainer_one_process=True,
        photos=40, photo_long_side=160, photo_shard_samples=16, loader_workers=(1, 2),
        budgets={"digits": 120, "photos": 120, "pretrain": 150, "resume": 150, "finetune": 150,
                 "evaluate": 150, "throughput": 150, "trainer": 90, "trainer-z3": 90, "loader": 150,
                 "compiled": 150})


# --------------------------------------------------------------------------------------------------------------
# Formatting


def fmt_num(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


FORMATS: dict[str, Callable[[Any], str]] = {
    "s": lambda v: f"{v:.1f}", "img_s": fmt_num, "tflops": fmt_num, "mfu": lambda v: f"{100 * v:.1f}%",
    "ratio": lambda v: f"{v:.3f}", "wait": lambda v: f"{100 * v:.1f}%", "mem_gib": lambda v: f"{v:.2f}",
    "per_core": fmt_num, "cores": fmt_num, "top1": lambda v: f"{100 * v:.2f}%",
}


def cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    text = FORMATS[key](value) if key in FORMATS and isinstance(value, (int, float)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def row(step: str, check: str, **values: Any) -> dict[str, Any]:
    return {"step": step, "check": check, "status": "ok", **values}


def failed(step: str, check: str, reason: str, seconds: float | None = None) -> dict[str, Any]:
    return {"step": step, "check": check, "status": "FAILED", "s": seconds, "notes": reason}


def error_line(output: str) -> str:
    """The exception (or `error: ...` line) at the end of a step's output, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    pattern = re.compile(r"^(error: |[\w.]*(Error|Exception|Interrupt|Exit)\b)")
    for line in reversed(lines):
        if pattern.match(line):
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's TensorBoard files: tag -> [(step, value)], in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def peak_memory_gib(scalars: dict[str, list[tuple[int, float]]]) -> tuple[float | None, str]:
    """Peak GPU memory allocated (GiB), or on a CPU the largest resident set logged, and which it is."""
    for tag, what in (("sys/max_mem_allocated", "GPU max allocated"), ("sys/rss_bytes", "CPU RSS")):
        if scalars.get(tag):
            return max(v for _, v in scalars[tag]) / GIB, what
    return None, ""


# --------------------------------------------------------------------------------------------------------------
# The parent: runs each step as a process under its budget, collects rows, writes the table.


@dataclass
class Outcome:
    rc: int | None  # None: killed at its time limit, or not started
    seconds: float
    output: str
    reason: str = ""  # why it counts as failed ("" when rc == 0)


class Check:
    """The run: the log, the rows, the clock; `command` and `worker` run one step each."""

    def __init__(self, out: Path, work: Path, time_limit: float, child_env: dict[str, str] | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.out, self.work = out, work
        self.start = time.monotonic()
        self.time_limit = time_limit
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.echo = echo
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")
        self.log = open(self.log_path, "a", buffering=1)  # for the whole run; the steps write to its end too
        self.header: list[str] = []
        self.command_line = ""
        self.child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                          "PYTHONUNBUFFERED": "1", **(child_env or {})}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, line: str) -> None:
        self.echo(line)
        self.log.write(line + "\n")

    def command(self, name: str, cmd: list[str], budget: float) -> Outcome:
        """Run `cmd` from the repository root, its output into the log, killed (its whole process group) after
        `budget` seconds or at the end of the run's time, whichever is first."""
        left = self.time_limit - self.elapsed() - 5
        timeout = min(budget, left)
        if left < 10:
            reason = f"not run: {max(left, 0):.0f} s left of the {self.time_limit:.0f} s run limit"
            self.say(f"[{self.elapsed():6.1f} s] {name}: {reason}")
            return Outcome(None, 0.0, "", reason)
        self.say(f"[{self.elapsed():6.1f} s] {name}: start (budget {timeout:.0f} s)")
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        offset = self.log_path.stat().st_size
        t0 = time.monotonic()
        # its own process group (killed as one: the step, its loader workers, compile workers), same session
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.child_env, stdout=self.log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **group)
        try:
            rc: int | None = proc.wait(timeout=timeout)
            reason = "" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            rc, reason = None, f"timed out after {timeout:.0f} s (its budget)" if timeout == budget else \
                f"stopped after {timeout:.0f} s: the run's {self.time_limit:.0f} s limit"
            kill_group(proc)
        except BaseException:
            kill_group(proc)
            raise
        seconds = time.monotonic() - t0
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            output = f.read()
        if reason:
            reason = f"{reason}: {error_line(output)}" if rc is not None else reason
        self.say(f"[{self.elapsed():6.1f} s] {name}: {'ok' if not reason else 'FAILED, ' + reason} in {seconds:.1f} s")
        return Outcome(rc, seconds, output, reason)

    def worker(self, step: str, name: str, kind: str, spec: dict[str, Any], budget: float,
               check: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Run a worker of this script; its rows (those written before a failure too), plus a FAILED row for a
        failure. Returns (rows, info)."""
        result = self.work / "results" / f"{name}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        spec_path = self.work / "specs" / f"{name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps({**spec, "result": str(result)}, indent=1))
        outcome = self.command(name, [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
                                      str(spec_path)], budget)
        data = json.loads(result.read_text()) if result.is_file() else {"rows": [], "info": {}}
        rows = data["rows"]
        if not rows and not outcome.reason:
            outcome.reason = "the worker wrote no results"
        if rows and rows[0].get("s") is None and not outcome.reason:
            rows[0]["s"] = outcome.seconds
        if outcome.reason:
            rows.append(failed(step, check, outcome.reason, outcome.seconds))
        self.add(rows)
        return rows, data["info"]

    def entry_point(self, step: str, name: str, cmd: list[str], budget: float, check: str,
                    parse: Callable[[Outcome], list[dict[str, Any]]]) -> bool:
        """Run a real entry point, then `parse` what it wrote into rows; a failure of either is one FAILED row."""
        outcome = self.command(name, cmd, budget)
        if outcome.reason:
            self.add([failed(step, check, outcome.reason, outcome.seconds)])
            return False
        try:
            rows = parse(outcome)
        except Exception as err:
            self.log.write(traceback.format_exc())
            self.add([failed(step, check, f"{type(err).__name__}: {err}", outcome.seconds)])
            return False
        rows[0].setdefault("s", outcome.seconds)
        self.add(rows)
        return True

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        for r in rows:
            shown = {k: cell(k, r.get(k)) for k, _ in COLUMNS if r.get(k) not in (None, "") and k != "check"}
            self.say("    " + r["check"] + ": " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        self.write()  # after every step: a run killed from outside still leaves the table so far

    def write(self, final: bool = False) -> str:
        rows = sorted(self.rows, key=lambda r: r["step"])  # stable: within a step, the order they ran in
        text = "\n".join([
            "# GPU check", "", f"`{self.command_line}`", "", *[f"- {line}" for line in self.header],
            f"- total {self.elapsed():.0f} s{'' if final else ' so far (the run has not finished)'}", "",
            "Steps: " + "; ".join(f"{k}. {v}" for k, v in STEP_TITLES.items()) + ".", "",
            markdown_table(rows), ""])
        for name, content in (("results.md", text), ("results.json", json.dumps({"info": self.info, "rows": rows},
                                                                                 indent=1))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(content)
            os.replace(tmp, self.out / name)
        if final:
            self.log.write("\n" + text)
        return text

    def close(self) -> None:
        self.log.close()


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group this script started for a step (the step and every process it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --------------------------------------------------------------------------------------------------------------
# Step 1: the demo through the real entry points; rows from what the runs wrote.


def smoke(check: Check, s: Settings, digits: Path) -> None:
    """Step 1: pretrain with a checkpoint, resume with more steps, fine-tune, evaluate; each a real entry point."""
    py, w, b = sys.executable, check.work, s.budgets
    pre, tune, ev = w / "demo", w / "demo-finetune", w / "demo-eval"
    data = [f"data.train={digits / 'train'}"] + ([f"schedule.warmup_steps={s.smoke_warmup}"] if s.smoke_warmup else [])
    size = [f"model.img_size={s.finetune_img}"]
    where = "CPU, gloo" if s.dry_run else "1 GPU, nccl"
    pretrain = [py, "launch/pretrain.py", "--config", DEMO, "--run-dir", str(pre)]
    cadence = [f"checkpoint.every_steps={s.checkpoint_every}", f"logging.every_steps={s.smoke_log_every}"]
    what = {
        "pretrain": f"demo pretrain: mixer_demo 32 px, {s.pretrain_steps} steps, checkpoint every {s.checkpoint_every}",
        "resume": f"demo resume: --resume auto to {s.resume_steps} steps",
        "finetune": f"demo fine-tune at {s.finetune_img} px"
                    f"{' (block-diagonal expansion)' if s.finetune_img > 32 else ''}, {s.finetune_steps} steps",
        "evaluate": "demo evaluation: launch/evaluate.py --fewshot",
    }

    def train_rows(first: int, last: int, name: str) -> list[dict[str, Any]]:
        scalars = tb_scalars(pre)
        steps = [st for st, _ in scalars.get("train/loss", [])]
        if not steps or max(steps) != last:
            raise RuntimeError(f"TensorBoard's last train/loss step is {max(steps, default=None)}, not {last}")
        if not (pre / "final.safetensors").is_file():
            raise RuntimeError(f"no final.safetensors in {pre}")
        rates = [v for st, v in scalars["train/images_per_sec"] if first + s.smoke_log_every < st <= last]
        rates = rates or [v for st, v in scalars["train/images_per_sec"] if first < st <= last]
        mem, kind = peak_memory_gib(scalars)
        latest = (pre / "checkpoints" / "latest").read_text().strip()
        return [row("1", what[name], img_s=statistics.median(rates), mem_gib=mem,
                    notes=f"{where}, bf16, ZeRO-1; final loss {scalars['train/loss'][-1][1]:.3f}; checkpoint "
                          f"`latest` = {latest}; img/s: median of TensorBoard's train/images_per_sec; mem: {kind}")]

    def resume_rows(outcome: Outcome) -> list[dict[str, Any]]:
        needle = f"resumed from step {s.pretrain_steps}"
        if needle not in outcome.output:
            raise RuntimeError(f"the log does not say '{needle}'")
        rows = train_rows(s.pretrain_steps, s.resume_steps, "resume")
        rows[0]["notes"] = f"'{needle}'; " + rows[0]["notes"]
        return rows

    def accuracy_rows(run_dir: Path, name: str) -> list[dict[str, Any]]:
        m = json.loads((run_dir / "metrics.json").read_text())
        shots = [f"{label} {k} {100 * res['mean']:.1f}%"
                 for evaluator, label in (("fewshot_init", "init"), ("fewshot", "trained"))
                 for k, res in m.get("evals", {}).get(evaluator, {}).get("fewshot", {}).items()]
        notes = f"top-5 {100 * m['top5']:.2f}% of {m['num_samples']} val digits"
        notes += f"; few-shot: {', '.join(shots)}" if shots else ""
        if name == "evaluate":
            ref = json.loads((tune / "metrics.json").read_text())["top1"]
            notes += "; equals the fine-tune's final top-1" if m["top1"] == ref else \
                f"; the fine-tune's final top-1 was {100 * ref:.2f}%"
        print(f"{what[name]}: top-1 {100 * m['top1']:.2f}%, {notes}")
        return [row("1", what[name], top1=m["top1"], notes=notes)]

    # --overwrite: a kept --work-dir holds the previous check's run
    ok = check.entry_point("1", "pretrain", [*pretrain, "--overwrite", "--set", *data,
                                             f"train.steps={s.pretrain_steps}", *cadence],
                           b["pretrain"], what["pretrain"], lambda o: train_rows(0, s.pretrain_steps, "pretrain"))
    if ok:
        ok = check.entry_point("1", "resume", [*pretrain, "--resume", "auto", "--set", *data,
                                               f"train.steps={s.resume_steps}", *cadence],
                               b["resume"], what["resume"], resume_rows)
    else:
        check.add([failed("1", what["resume"], "not run: the pretraining failed")])
    if not (pre / "final.safetensors").is_file():
        check.add([failed("1", f"{what['finetune']}; {what['evaluate']}", "not run: no pretrained weights")])
        return
    finetune = [py, "launch/finetune.py", "--config", DEMO_FINETUNE, "--run-dir", str(tune), "--overwrite", "--set",
                f"init.path={pre}", *data, *size, f"data.val={digits / 'val'}", f"train.steps={s.finetune_steps}",
                f"fewshot.enabled={str(s.finetune_fewshot).lower()}"]
    if not check.entry_point("1", "finetune", finetune, b["finetune"], what["finetune"],
                             lambda o: accuracy_rows(tune, "finetune")):
        check.add([failed("1", what["evaluate"], "not run: the fine-tune failed")])
        return
    evaluate = [py, "launch/evaluate.py", "--config", DEMO_FINETUNE, "--checkpoint", str(tune), "--data",
                str(digits / "val"), "--run-dir", str(ev), "--fewshot", "--set", *data, *size]
    check.entry_point("1", "evaluate", evaluate, b["evaluate"], what["evaluate"],
                      lambda o: accuracy_rows(ev, "evaluate"))


# --------------------------------------------------------------------------------------------------------------
# Derived rows of step 4: how many loader cores one GPU needs at the rates measured.


def trainer_vs_measured_peak(rows: list[dict[str, Any]]) -> None:
    """Notes on the trainer rows: their MFU against step 2's measured matmul peak too (theirs is the run's)."""
    peak = next((r["tflops"] for r in rows if r.get("peak") and r["status"] == "ok"), None)
    for r in rows:
        if peak and r["step"] == "3" and r["status"] == "ok" and r.get("tflops"):
            r["notes"] = f"{r['tflops'] / peak:.1%} of step 2's measured {fmt_num(peak)} TFLOP/s; " + r["notes"]


def cores_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    loaders = [r for r in rows if r["step"] == "4" and r["status"] == "ok" and r.get("per_core")]
    if not loaders:
        return []
    best = max(loaders, key=lambda r: r.get("workers", 0))
    per_core = best["per_core"]
    sources = [r for r in rows if r["status"] == "ok" and r.get("img_s") and r.get("consumer")]
    return [row("4", f"loader cores one GPU needs: {r['consumer']}", img_s=r["img_s"], per_core=per_core,
                cores=r["img_s"] / per_core,
                notes=f"GPU img/s / img per CPU-second with {best['workers']} workers")
            for r in sources]


def compiled_vs_eager(rows: list[dict[str, Any]]) -> None:
    """Notes on the compiled rows: their speed-up over the same model run eagerly."""
    eager = {(r["model"], r["side"]): r["img_s"] for r in rows
             if r.get("mode") == "eager" and r["status"] == "ok" and r.get("img_s")}
    for r in rows:
        key = (r.get("model"), r.get("side"))
        if r.get("mode") == "compiled" and r["status"] == "ok" and key in eager:
            r["notes"] = f"{r['img_s'] / eager[key]:.3f}x eager; " + r.get("notes", "")


# --------------------------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", default="runs/gpu_check", help="log and table (default runs/gpu_check)")
    p.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU (default without CUDA)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run (GPU 450, dry 900)")
    p.add_argument("--work-dir", default=None, help="data and run dirs (default: a temporary folder, removed)")
    p.add_argument("--keep-work", action="store_true", help="keep the work dir")
    p.add_argument("--steps", default="0,1,2,3,4", help="the steps to run, comma-separated (default all; 0 always)")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(*args.worker)
    out = Path(args.out_dir).resolve()
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    hide_gpu = {"CUDA_VISIBLE_DEVICES": ""} if args.dry_run else {}
    check = Check(out, work, args.time_limit or 900, child_env=hide_gpu)
    check.command_line = command
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stopped from outside: end the step running, keep the table
        signal.signal(sig, interrupted)
    try:
        return run_all(check, args)
    except KeyboardInterrupt:
        check.say("interrupted: the table holds the steps run so far")
        check.write(final=True)
        return 130
    finally:
        check.close()
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_all(check: Check, args: argparse.Namespace) -> int:
    check.say(f"gpu_check: log {check.log_path}, work dir {check.work}")
    _, info = check.worker("0", "env", "env", {}, 120, "environment")
    cores = int(info.get("cpu_cores") or os.cpu_count() or 1)
    dry = args.dry_run or not info.get("cuda")
    s = (dry_settings if dry else gpu_settings)(cores, args.time_limit)
    check.time_limit = s.time_limit
    if dry:  # the CPU: no GPU, and one OpenMP thread per process unless told (the demo's and the tests' choice)
        check.child_env["CUDA_VISIBLE_DEVICES"] = ""
        check.child_env.setdefault("OMP_NUM_THREADS", "1")
    check.info = {**info, "mode": "dry run (CPU, tiny settings)" if dry else "GPU", "settings": {
        k: v for k, v in s.__dict__.items() if k != "budgets"}}
    check.header = [f"mode: {check.info['mode']}", *info.get("lines", [])]
    for line in check.header:
        check.say(line)
    b, w = s.budgets, check.work
    steps = {int(x) for x in args.steps.split(",") if x.strip()}

    # 0: data
    digits = w / "digits"
    if 1 in steps:
        check.worker("0", "digits", "digits", {"out": str(digits)}, b["digits"], "data: digits shards")
    photos = w / "photos"
    if steps & {3, 4}:
        check.worker("0", "photos", "photos", {"out": str(photos), "images": s.photos, "long_side": s.photo_long_side,
                                           "shard_samples": s.photo_shard_samples, "workers": min(8, cores)},
                     b["photos"], "data: photo JPEG shards")
    # 1: the demo through the entry points
    if 1 in steps:
        smoke(check, s, digits)
    # 2: throughput, eager (compiled at the end: the compile time is the least predictable)
    throughput = {"device": s.device, "models": s.models, "rounds": s.rounds, "steps": s.steps_per_round,
                  "backend": s.compile_backend}
    if 2 in steps:
        check.worker("2", "throughput-eager", "throughput", {**throughput, "compile": False}, b["throughput"],
                     "throughput, eager")
    # 3: the trainer
    runs = []
    for zero in (1, 3):
        for ckpt in (False, True):
            name = f"trainer-z{zero}{'-ckpt' if ckpt else ''}"
            spec = {"data": str(photos / "shards"), "run_dir": str(w / name), "zero": zero, "ckpt": ckpt,
                    "model": s.trainer_model, "img": s.trainer_img, "batch": s.trainer_batch,
                    "classes": s.trainer_classes, "steps": s.trainer_steps, "log_every": s.trainer_log_every,
                    "skip": s.trainer_skip_windows, "workers": s.trainer_workers}
            what = f"trainer {s.trainer_model}, ZeRO-{zero}, checkpointing {'on' if ckpt else 'off'}"
            runs.append((name, spec, b["trainer-z3" if zero == 3 else "trainer"], what))
    if 3 not in steps:
        pass
    elif s.trainer_one_process:
        check.worker("3", "trainer", "trainer", {"runs": [spec for _, spec, _, _ in runs]},
                     sum(budget for _, _, budget, _ in runs), "trainer, the four configurations in one process")
    else:
        for name, spec, budget, what in runs:
            check.worker("3", name, "trainer", {"runs": [spec]}, budget, what)
    # 4: the loader
    if 4 in steps:
        check.worker("4", "loader", "loader", {"data": str(photos / "shards"), "run_dir": str(w / "loader"),
                                               "model": s.trainer_model, "img": s.trainer_img,
                                               "batch": s.trainer_batch, "workers": s.loader_workers},
                     b["loader"], "input pipeline")
    # 2 (continued): compiled
    # L/16 first: the model of the trainer's MFU goal, and the longer compile
    compiled = {**throughput, "compile": True, "models": s.models[::-1][:s.compile_models]}
    if 2 in steps:
        check.worker("2", "throughput-compiled", "throughput", compiled, b["compiled"], "throughput, torch.compile")
    compiled_vs_eager(check.rows)
    trainer_vs_measured_peak(check.rows)
    check.add(cores_rows(check.rows))
    text = check.write(final=True)
    print("\n" + text)
    bad = [r for r in check.rows if r["status"] != "ok"]
    check.say(f"gpu_check: {len(check.rows)} rows, {len(bad)} FAILED, {check.elapsed():.0f} s; "
              f"table {check.out / 'results.md'}")
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and writes its rows to spec["result"] as it goes.


class Results:
    """A worker's rows and info, rewritten (atomically) after each addition so a later failure keeps them."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def add(self, *rows: dict[str, Any]) -> None:
        self.rows.extend(rows)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": self.rows, "info": self.info}, indent=1))
        os.replace(tmp, self.path)


def run_worker(kind: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    results = Results(spec["result"])
    WORKERS[kind](spec, results)
    return 0


# What the steps import (module name, distribution): a missing one fails the steps that need it, named here first.
REQUIRED = (("torch", "torch"), ("deepspeed", "deepspeed"), ("timm", "timm"), ("torchvision", "torchvision"),
            ("webdataset", "webdataset"), ("tensorboard", "tensorboard"), ("safetensors", "safetensors"),
            ("yaml", "pyyaml"), ("PIL", "pillow"), ("sklearn", "scikit-learn"), ("skimage", "scikit-image"))


def worker_env(spec: dict[str, Any], results: Results) -> None:
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "missing"

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_cores": len(os.sched_getaffinity(0))}
    lines = []
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        driver = nvidia_smi("driver_version") or proc_driver_version() or "unknown"
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
        info.update(device=props.name, driver=driver, memory_gib=props.total_memory / GIB,
                    capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count())
        lines.append(f"device: {props.name} ({props.total_memory / GIB:.0f} GiB, sm_{props.major}{props.minor}), "
                     f"{info['gpus']} visible; driver {driver}; CUDA runtime {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
    else:
        info.update(device="no CUDA device", driver="-")
        lines.append(f"device: no CUDA device (torch.cuda.is_available() is False; torch built for CUDA "
                     f"{torch.version.cuda})")
    info.update(torch=torch.__version__, deepspeed=installed("deepspeed"), timm=installed("timm"),
                python=f"{sys.version.split()[0]} ({sys.executable})")
    lines.append(f"torch {torch.__version__}, DeepSpeed {info['deepspeed']}, timm {info['timm']}, "
                 f"Python {info['python']}; {info['cpu_cores']} CPU cores")
    missing = [dist for module, dist in REQUIRED if importlib.util.find_spec(module) is None]
    info["missing"] = missing
    if missing:
        lines.append(f"MISSING packages: {', '.join(missing)} (the steps that import them will fail)")
    info["lines"] = lines
    results.info = info
    if missing:
        results.add(failed("0", "environment", "; ".join(lines)))
    else:
        results.add(row("0", "environment", notes="; ".join(lines)))


def nvidia_smi(field_name: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def proc_driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+([\d.]+)", text)
    return match.group(1) if match else None


def worker_digits(spec: dict[str, Any], results: Results) -> None:
    from launch.local import build_digits

    out = Path(spec["out"])
    build_digits(out)
    counts = [json.loads((out / split / "manifest.json").read_text())["num_samples"] for split in ("train", "val")]
    results.add(row("0", "data: digits shards (launch/local.py build_digits)",
                    notes=f"{counts[0]} train + {counts[1]} val images, 32 px PNG"))


def worker_photos(spec: dict[str, Any], results: Results) -> None:
    import numpy as np

    from benchmarks.bench_input import CLASSES, make_jpegs

    out = Path(spec["out"])
    tree, shards = out / "jpegs", out / "shards"
    t0 = time.perf_counter()
    jpegs = make_jpegs(spec["images"], spec["long_side"])  # crops, flips and aspect ratios of the 9 photos
    for i, data in enumerate(jpegs):
        folder = tree / f"class{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:05d}.jpg").write_bytes(data)
    made = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "data_prep", "build", "--layout", "folders", "--source", str(tree), "--out",
           str(shards), "--shard-max-samples", str(spec["shard_samples"]), "--workers", str(spec["workers"]),
           "--overwrite"]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    manifest = json.loads((shards / "manifest.json").read_text())
    results.add(row("0", "data: photo JPEG class folders -> data_prep build --layout folders",
                    notes=f"{manifest['num_samples']} distinct JPEGs (long side {spec['long_side']} px, mean "
                          f"{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB, {CLASSES} classes) in "
                          f"{len(manifest['shards'])} shards; JPEGs made in {made:.1f} s"))


def worker_throughput(spec: dict[str, Any], results: Results) -> None:
    """Ours against timm's MlpMixer for each of spec["models"], eager or compiled (a failure of one model is its
    FAILED row; the next runs)."""
    import torch

    from pretrain.telemetry.mfu import PEAK_FLOPS, device_model, measure_peak_flops

    device = torch.device(spec["device"])
    t0 = time.perf_counter()
    peak = [measure_peak_flops(device, torch.bfloat16)]  # the best seen so far (measured again after each model)
    seconds = time.perf_counter() - t0
    table = ""
    if device.type == "cuda":
        model = device_model(torch.cuda.get_device_name(device))
        table = f"; data sheet {PEAK_FLOPS[model][torch.bfloat16] / 1e12:.0f} ({model})" if model else ""
    if not spec["compile"]:
        results.add(row("2", "bf16 matmul peak (pretrain.telemetry.mfu.measure_peak_flops)", s=seconds,
                        tflops=peak[0] / 1e12,
                        notes=f"{'4096' if device.type == 'cuda' else '1024'}^2 matmuls, best of 0.3 s{table}",
                        peak=True))
    for role, name, img, batch in spec["models"]:
        try:
            results.add(*ours_vs_timm(spec, device, role, name, img, batch, peak))
        except Exception as err:
            traceback.print_exc()
            how = f"torch.compile ({spec['backend']})" if spec["compile"] else "eager"
            results.add(failed("2", f"{name} {img} px batch {batch}, {how}", f"{type(err).__name__}: {err}"[:300]))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def ours_vs_timm(spec: dict[str, Any], device: Any, role: str, name: str, img: int, batch: int,
                 peak: list[float]) -> list[dict[str, Any]]:
    """Training steps of ours and of timm's twin (same weights), warm-up, then alternating timed rounds."""
    import timm
    import torch

    from benchmarks.bench_model import WARMUP_STEPS, images_per_second, make_step, sync
    from pretrain.models import create_model, mixer_flops_per_image
    from pretrain.telemetry.mfu import measure_peak_flops

    mode, backend = ("compiled" if spec["compile"] else "eager"), spec["backend"]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ours = create_model(name, img_size=img)
    theirs = timm.create_model(f"{name}_224", pretrained=False, img_size=img, num_classes=ours.num_classes)
    theirs.load_state_dict(ours.state_dict())  # same weights
    flops = mixer_flops_per_image(ours)
    if spec["compile"]:
        for model in (ours, theirs):  # in place, as the trainer's `model.compile: true` does
            model.compile() if backend == "inductor" else model.compile(backend=backend)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, ours.num_classes, (batch,), device=device)
    steps = {"ours": make_step(ours, images, labels, "bf16"), "timm": make_step(theirs, images, labels, "bf16")}
    first = {}
    for side, step in steps.items():
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        first[side] = time.perf_counter() - start
        for _ in range(WARMUP_STEPS - 1):
            step()
    rates: dict[str, list[float]] = {side: [] for side in steps}
    for _ in range(spec["rounds"]):
        for side, step in steps.items():
            rates[side].append(images_per_second(step, batch, spec["steps"], device))
    peak[0] = max(peak[0], measure_peak_flops(device, torch.bfloat16))
    median = {side: statistics.median(r) for side, r in rates.items()}
    paired = sorted(o / t for o, t in zip(rates["ours"], rates["timm"], strict=True))
    how = f"torch.compile ({backend})" if spec["compile"] else "eager"
    rows = []
    for side in steps:
        achieved = 3 * flops * median[side]
        label = "ours (pretrain.models)" if side == "ours" else f"timm.create_model('{name}_224')"
        notes = (f"first step {first[side]:.1f} s{' (compile)' if spec['compile'] else ''}; "
                 f"{spec['rounds']} rounds x {spec['steps']} steps, alternating; "
                 f"{3 * flops / 1e9:.1f} GFLOP/img fwd+bwd; MFU of the {peak[0] / 1e12:.1f} TFLOP/s measured peak")
        values: dict[str, Any] = dict(img_s=median[side], tflops=achieved / 1e12, mfu=achieved / peak[0])
        if side == "ours":
            values["ratio"] = median["ours"] / median["timm"]
            notes += f"; per round ours/timm {paired[0]:.3f}-{paired[-1]:.3f}"
        r = row("2", f"{name} {img} px batch {batch}, AMP bf16, {how}: {label}", s=time.perf_counter() - t0,
                notes=notes, **values)
        r.update(model=name, side=side, mode=mode)
        if side == "ours":
            r["consumer"] = f"{name} {mode} training step ({role} role)"
        rows.append(r)
    return rows


def trainer_overrides(spec: dict[str, Any]) -> list[str]:
    """The L/16 recipe (configs/mixer_l16.yaml) on the photo shards, one device, a short run."""
    out = [f"data.train={spec['data']}", f"data.workers={spec['workers']}", "data.shuffle_buffer=256",
           f"model.name={spec['model']}", f"model.img_size={spec['img']}",
           f"train.global_batch={spec['batch']}", f"train.micro_batch={spec['batch']}"]
    if spec.get("steps"):
        out += [f"model.grad_checkpointing={str(spec['ckpt']).lower()}", f"train.steps={spec['steps']}",
                "train.epochs=0",  # the recipe counts its length in epochs: the check runs `steps`
                f"train.zero_stage={spec['zero']}", f"schedule.warmup_steps={spec['steps'] // 2}",
                f"logging.every_steps={spec['log_every']}", "logging.image_every_steps=0",
                f"checkpoint.every_steps={10 * spec['steps']}"]
    if spec.get("classes"):
        out.append(f"model.num_classes={spec['classes']}")
    return out


def torch_optimizer(engine: Any) -> Any:
    """The torch optimizer inside DeepSpeed's wrappers."""
    import torch

    opt = getattr(engine.ds, "basic_optimizer", None) or engine.optimizer
    for _ in range(5):
        if isinstance(opt, torch.optim.Optimizer):
            return opt
        opt = getattr(opt, "optimizer", None)
    return None


def worker_trainer(spec: dict[str, Any], results: Results) -> None:
    """Each of spec["runs"] in turn, in this process (a failure of one is its FAILED row; the next runs)."""
    from launch.cli import setup_logging

    setup_logging()
    import torch

    from pretrain.cluster.distributed import detect_env, init_distributed, shutdown_distributed

    env = detect_env()
    init_distributed(env)
    for one in spec["runs"]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            results.add(train_briefly(one, env))
        except Exception as err:
            traceback.print_exc()
            results.add(failed("3", f"trainer, ZeRO-{one['zero']}, checkpointing {'on' if one['ckpt'] else 'off'}",
                               f"{type(err).__name__}: {err}"[:300]))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    shutdown_distributed()


def train_briefly(spec: dict[str, Any], env: Any) -> dict[str, Any]:
    """Run (pretrain/run.py) built from the L/16 recipe and stepped as Run.run steps it (without the evaluations
    and checkpoint saves), logging every few steps; the figures are read back from its TensorBoard scalars."""
    import torch.distributed as dist

    from pretrain.config import PretrainConfig, load_config
    from pretrain.run import Run
    from pretrain.telemetry.throughput import StepTimer

    cfg = load_config(ROOT / L16_RECIPE, PretrainConfig, trainer_overrides(spec))
    run_dir = Path(spec["run_dir"])
    t0 = time.perf_counter()
    run = Run(cfg, run_dir, env)
    built = time.perf_counter() - t0
    state, gb = run.state, cfg.train.global_batch
    timer, window = StepTimer(), []
    item: dict[str, Any] = {}
    try:
        while state.step < run.length.steps:  # Run.run's loop: data, step, count, log when due
            item = next(run.data)
            timer.data_ready()
            result = run.engine.step(run.micro_batches(item))
            state.advance(gb, result.bad)
            timer.step_done(gb)
            window.append(result)
            if run.monitor.due(state.step):
                run.log_metrics(window, timer, item)
                window = []
    finally:
        run.data.close()
        run.monitor.close()
    scalars = tb_scalars(run_dir)
    skip = spec["skip"] * spec["log_every"]

    def kept(tag: str) -> list[float]:
        values = scalars.get(tag, [])
        return [v for st, v in values if st > skip] or [v for _, v in values]

    img_s = statistics.median(kept("train/images_per_sec"))
    mem, kind = peak_memory_gib(scalars)
    opt = torch_optimizer(run.engine)
    fused = bool(opt is not None and opt.defaults.get("fused"))
    pinned = bool(item and item["image"].is_pinned())
    facts = (f"{dist.get_backend()}, {cfg.train.precision}, ZeRO-{run.engine.ds.zero_optimization_stage()}, "
             f"AdamW fused={fused}, pinned batches={pinned}, {cfg.data.workers} loader workers; "
             f"RandAugment {cfg.augment.randaugment}, mixup {cfg.augment.mixup}, drop-path {cfg.model.drop_path_rate}")
    notes = (f"{facts}; built in {built:.1f} s; median of {len(kept('train/images_per_sec'))} windows of "
             f"{spec['log_every']} steps after the first {spec['skip']}; MFU of {run.peak_flops / 1e12:.1f} TFLOP/s "
             f"(the run's peak); mem: {kind}")
    r = row("3", f"trainer {cfg.model.name} {cfg.model.img_size} px batch {gb}, L/16 recipe, ZeRO-{spec['zero']}, "
                 f"checkpointing {'on' if spec['ckpt'] else 'off'}", s=time.perf_counter() - t0,
            img_s=img_s, tflops=3 * run.flops_per_image * img_s / 1e12,
            mfu=statistics.median(kept("train/mfu")), wait=statistics.median(kept("train/data_wait_frac")),
            mem_gib=mem, notes=notes)
    if spec["zero"] == 1 and not spec["ckpt"]:
        r["consumer"] = f"{cfg.model.name} trainer, ZeRO-1"
    return r


def worker_loader(spec: dict[str, Any], results: Results) -> None:
    """The train loader of the L/16 recipe (pretrain.components.train_data.TrainData) alone: img/s and img per
    CPU-second."""
    import torch

    from benchmarks import bench_input
    from pretrain.cluster.distributed import detect_env
    from pretrain.components.train_data import TrainData
    from pretrain.config import PretrainConfig, load_config

    if not Path(f"/proc/self/task/{os.getpid()}/children").is_file():  # gVisor and some container kernels
        bench_input._children_cpu = children_cpu_psutil
    torch.set_num_threads(1)
    env = detect_env()
    for workers in spec["workers"]:
        cfg = load_config(ROOT / L16_RECIPE, PretrainConfig, trainer_overrides({**spec, "workers": workers}))
        data = TrainData(cfg, env, Path(spec["run_dir"]), accum=1)
        warmup, count = workers + 1, 4 * workers + 8
        t0 = time.perf_counter()
        try:
            rate, per_cpu = bench_input.throughput(data, warmup, count)
        finally:
            data.close()
        r = row("4", f"loader: L/16 recipe augmentation at {spec['img']} px, batch {spec['batch']}, "
                     f"{workers} worker{'s' if workers > 1 else ''}", s=time.perf_counter() - t0,
                img_s=rate, per_core=per_cpu,
                notes=f"RandAugment {cfg.augment.randaugment}, uint8 batches, pin_memory="
                      f"{env.device.type == 'cuda'}; {count} batches after {warmup}; per core = img per CPU-second "
                      f"of the main process and its workers")
        r["workers"] = workers
        results.add(r)


def children_cpu_psutil() -> float:
    """CPU seconds of this process's live descendants (the loader workers), where /proc has no `children` file."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


WORKERS: dict[str, Callable[[dict[str, Any], Results], None]] = {
    "env": worker_env, "digits": worker_digits, "photos": worker_photos, "throughput": worker_throughput,
    "trainer": worker_trainer, "loader": worker_loader,
}

if __name__ == "__main__":
    sys.exit(main())
