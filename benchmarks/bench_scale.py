"""The data path at scale: data_prep's build, the train loader at ImageNet-21k shape, evaluation over 2 ranks.

Sections (all by default; pick some with --prep, --loader, --eval):
  * prep: data_prep builds class folders of small synthetic JPEGs (--prep-px, a few hundred distinct images
    hard-linked into --prep-classes folders) of each --prep-sizes, `--workers 2`: seconds, images/s and the peak
    memory of the process tree (the sum of its processes' PSS, psutil, sampled every 100 ms); for each of
    --kill-sizes a second build is killed with SIGKILL (its whole process group) at --kill-at of the first build's
    time and finished with --resume: the resumed manifest must list the same shards (names, counts, sha256) and
    `data_prep verify` must pass.
    Beside it, the decode-bound rate of real-size images: --real-images 500 px JPEGs (benchmarks/bench_data_prep.py
    make_tree), built with --resize-shorter 256 --quality 90.
  * loader: a synthetic manifest of --loader-shards x --loader-per-shard samples (ImageNet-21k: 10,000 x 1,400)
    whose shard files are empty and whose indices (SHARD.tar.idx) are written directly in the index format: the
    manifest's load, the stream layout of --loader-ranks x --loader-workers streams and rank 0's first pieces, the
    size of a merged data state, and the choice of a 10 % subset from the indices (scan_labels + select_subset).
    Then the resume at 90 % of an epoch over real shards (benchmarks/bench_resume.py `measure`): bytes and seconds to
    the first step, against the replay the stream did before the offset index.
  * eval: --eval-samples 32 px JPEGs (keys ILSVRC2012_val_%08d, --eval-classes classes, a ReaL table of as many
    entries), mixer_demo with random weights, 2 ranks under torchrun on the CPU: the classification evaluator (every
    sample once, ReaL) and the few-shot evaluator (pool: the same shards, --shots x 3 seeds, scored on them): seconds
    and peak memory of each rank's process tree (its loader worker included).
Figures go to stdout, and with --json to a file; --plot draws the PNG of docs/benchmarks.md from that JSON.

    .venv/bin/python -m benchmarks.bench_scale --json scale.json --plot docs/bench_scale.png   # full sizes
    .venv/bin/python -m benchmarks.bench_scale --prep --prep-sizes 1000 10000 --kill-sizes 10000    # a small run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from PIL import Image  # noqa: E402

PY = sys.executable
REAL_KEY = "ILSVRC2012_val_{:08d}"


class PeakRss:
    """Peak memory of a process and its descendants, sampled every `interval` s in a thread: the sum of their PSS
    (proportional set size: a page shared by n processes counts 1/n in each, so forked workers are not counted
    twice), RSS where PSS cannot be read."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.proc, self.interval, self.peak, self.root_peak = psutil.Process(pid), interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def current(self) -> int:
        """The tree's memory now, in bytes."""
        return self._sample()

    def _sample(self) -> int:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return 0
        sizes = [_memory(p) for p in procs]
        self.root_peak = max(self.root_peak, sizes[0])
        return sum(sizes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self.peak = max(self.peak, self._sample())
        self._stop.set()
        self._thread.join()
        return self.peak


def _memory(p: psutil.Process) -> int:
    """PSS of a process, its RSS where PSS cannot be read, 0 if it is gone."""
    try:
        return p.memory_full_info().pss
    except (psutil.Error, AttributeError):
        try:
            return p.memory_info().rss
        except psutil.Error:
            return 0


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------- prep


def tiny_jpegs(count: int, px: int, seed: int = 0) -> list[bytes]:
    """`count` distinct px x px JPEGs (smooth colour gradients with noise, quality 90)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        base = Image.linear_gradient("L").resize((px, px)).rotate(rng.uniform(0, 360))
        noise = Image.effect_noise((px, px), rng.uniform(10, 60))
        colour = [Image.blend(base, noise, rng.uniform(0.2, 0.6)) for _ in range(3)]
        buf = io.BytesIO()
        Image.merge("RGB", colour).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_class_tree(root: str, images: int, classes: int, px: int, distinct: int = 256) -> None:
    """`images` JPEGs in `classes` folders: `distinct` real files, the rest hard links to them."""
    sources = []
    os.makedirs(os.path.join(root, ".src"))
    for i, data in enumerate(tiny_jpegs(distinct, px)):
        path = os.path.join(root, ".src", f"{i}.jpg")
        with open(path, "wb") as f:
            f.write(data)
        sources.append(path)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c:05d}"))
    for i in range(images):
        os.link(sources[i % distinct], os.path.join(root, f"c{i % classes:05d}", f"img{i:08d}.jpg"))
    shutil.rmtree(os.path.join(root, ".src"))  # the links keep the files


def build_command(src: str, out: str, workers: int, *extra: str) -> list[str]:
    return [PY, "-m", "data_prep", "build", "--layout", "folders", "--source", src, "--out", out,
            "--workers", str(workers), *extra]


def run_build(cmd: list[str], kill_after: float | None = None) -> dict:
    """Run a data_prep command in its own process group: seconds, peak RSS of its tree, return code (-9: killed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = PeakRss(proc.pid)
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stderr = proc.communicate()[1]
    finally:
        rss = peak.stop()
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"seconds": seconds, "peak_mb": rss / 2**20, "rc": proc.returncode}


def shard_records(out: str) -> tuple[int, list[tuple[str, int, str]]]:
    with open(os.path.join(out, "manifest.json")) as f:
        doc = json.load(f)
    return doc["num_samples"], [(s["name"], s["num_samples"], s["sha256"]) for s in doc["shards"]]


def prep_section(args: argparse.Namespace, tmp: str) -> dict:
    rows = []
    for n in args.prep_sizes:
        src, out = os.path.join(tmp, f"src{n}"), os.path.join(tmp, f"out{n}")
        t0 = time.perf_counter()
        make_class_tree(src, n, min(args.prep_classes, n), args.prep_px)
        made = time.perf_counter() - t0
        row = {"images": n, "classes": min(args.prep_classes, n), "load": load_average(),
               **run_build(build_command(src, out, args.prep_workers))}
        row["images_per_s"] = n / row["seconds"]
        print(f"prep {n:>9} images ({row['classes']} classes, {args.prep_px} px, tree made in {made:.0f} s): "
              f"{row['seconds']:8.1f} s  {row['images_per_s']:7.0f} img/s  peak {row['peak_mb']:6.0f} MB "
              f"(load {row['load']})", flush=True)
        if n in args.kill_sizes:
            killed_out = out + "-killed"
            killed = run_build(build_command(src, killed_out, args.prep_workers), row["seconds"] * args.kill_at)
            resumed = run_build(build_command(src, killed_out, args.prep_workers, "--resume"))
            same = shard_records(killed_out) == shard_records(out)
            verify = subprocess.run([PY, "-m", "data_prep", "verify", killed_out], cwd=ROOT, capture_output=True)
            row["kill"] = {"killed_after_s": killed["seconds"], "was_killed": killed["rc"] == -signal.SIGKILL,
                           "resume_s": resumed["seconds"], "resume_peak_mb": resumed["peak_mb"],
                           "equal_to_uninterrupted": same, "verify_ok": verify.returncode == 0}
            k = row["kill"]
            print(f"     kill -9 after {k['killed_after_s']:.1f} s ({'killed' if k['was_killed'] else 'had finished'})"
                  f", --resume {k['resume_s']:.1f} s (peak {k['resume_peak_mb']:.0f} MB): shards equal to the "
                  f"uninterrupted build: {same}; verify: {'ok' if k['verify_ok'] else 'FAILED'}", flush=True)
            shutil.rmtree(killed_out)
        rows.append(row)
        shutil.rmtree(src)
        shutil.rmtree(out)
    real = None
    if args.real_images:
        from benchmarks.bench_data_prep import QUALITY, SHORTER, make_tree

        src, out = os.path.join(tmp, "real"), os.path.join(tmp, "real-out")
        kb = make_tree(src, args.real_images) / args.real_images / 1e3
        result = run_build(build_command(src, out, args.prep_workers, "--resize-shorter", str(SHORTER), "--quality",
                                         str(QUALITY), "--shard-max-samples", str(max(1, args.real_images // 4))))
        real = {"images": args.real_images, "kb": kb, **result, "images_per_s": args.real_images / result["seconds"],
                "load": load_average()}
        print(f"prep real-size: {args.real_images} JPEGs of 500 px ({kb:.0f} KB), --resize-shorter {SHORTER}: "
              f"{result['seconds']:.1f} s  {real['images_per_s']:.0f} img/s  peak {result['peak_mb']:.0f} MB "
              f"(load {real['load']})", flush=True)
        shutil.rmtree(src)
        shutil.rmtree(out)
    return {"sizes": rows, "real": real}


# ---------------------------------------------------------------- loader


SAMPLE_BYTES = 110 * 1024  # an ImageNet-size sample's tar bytes, for the synthetic index


def write_synthetic(folder: str, shards: int, per_shard: int, classes: int) -> str:
    """Empty shard files and their indices (the index format, written directly) and a manifest; returns its path."""
    from data_prep.index import IndexEntry, format_index, index_path
    from data_prep.manifest import FORMAT_VERSION, MANIFEST_NAME

    entries_of = []
    shard_bytes = per_shard * SAMPLE_BYTES + 1024
    for s in range(shards):
        name = f"shard-{s:05d}.tar"
        path = os.path.join(folder, name)
        open(path, "wb").close()
        base = s * per_shard
        entries = [IndexEntry(i * SAMPLE_BYTES, SAMPLE_BYTES, (base + i) * 7919 % classes, f"n{base + i:09d}")
                   for i in range(per_shard)]
        with open(index_path(path), "w") as f:
            f.write(format_index(entries, shard_bytes))
        entries_of.append({"name": name, "num_samples": per_shard, "bytes": shard_bytes,
                           "sha256": hashlib.sha256(name.encode()).hexdigest()})
    doc = {"format_version": FORMAT_VERSION, "num_samples": shards * per_shard, "num_classes": classes,
           "classes": [f"c{c}" for c in range(classes)], "class_counts": [0] * classes, "shards": entries_of}
    path = os.path.join(folder, MANIFEST_NAME)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def loader_section(args: argparse.Namespace, tmp: str) -> dict:
    from benchmarks.bench_resume import measure
    from pretrain.data import load_manifest
    from pretrain.data.sample_stream import StreamState
    from pretrain.data.shard_index import shard_index
    from pretrain.data.state import make_state
    from pretrain.data.streams import make_layout, stream_pieces
    from pretrain.data.subset import scan_labels, select_subset

    folder = os.path.join(tmp, "synthetic")
    os.makedirs(folder)
    t0 = time.perf_counter()
    path = write_synthetic(folder, args.loader_shards, args.loader_per_shard, args.loader_classes)
    written = time.perf_counter() - t0
    out: dict = {"shards": args.loader_shards, "samples": args.loader_shards * args.loader_per_shard,
                 "load": load_average()}
    t0 = time.perf_counter()
    m = load_manifest(path)
    out["manifest_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    layout = make_layout(m.num_samples, micro_batch=args.loader_micro_batch, accum=1, world_size=args.loader_ranks,
                         workers=args.loader_workers, seed=0, shuffle_buffer=10_000, shards=m.digest)
    pieces = [stream_pieces(m.shard_sizes, layout, 0, s) for s in range(args.loader_workers)]  # rank 0's streams
    for p in pieces:
        shard_index(m.shards[p[0].shard])
    out["layout_s"] = time.perf_counter() - t0
    streams = {s: StreamState(round=3, pos=layout.range_size - 1, good=10**7, corrupt=12, truncated=1).to_dict()
               for s in range(layout.num_streams)}
    out["streams"] = layout.num_streams
    out["state_bytes"] = len(json.dumps(make_state(layout, 10**6, streams)))
    print(f"loader: {out['samples']:,} samples in {out['shards']:,} shards (indices written in {written:.0f} s); "
          f"manifest {out['manifest_s']:.2f} s; layout of {layout.num_streams} streams + rank 0's {args.loader_workers}"
          f" streams' pieces and first indices {out['layout_s']:.2f} s; merged data state {out['state_bytes']:,} "
          f"bytes (load {out['load']})", flush=True)
    if args.subset:
        shard_index.cache_clear()
        base = psutil.Process().memory_info().rss
        peak = PeakRss(os.getpid())
        t0 = time.perf_counter()
        labels = scan_labels(m, threads=2)
        scanned = time.perf_counter() - t0
        kept = sum(map(len, select_subset(labels, 0.1, 0)))
        out["subset"] = {"scan_s": scanned, "select_s": time.perf_counter() - t0 - scanned, "kept": kept}
        del labels
        out["subset"]["peak_mb"] = (peak.stop() - base) / 2**20
        sub = out["subset"]
        print(f"loader: 10 % subset from the indices: labels {sub['scan_s']:.1f} s + selection {sub['select_s']:.1f} s"
              f", {kept:,} kept; peak memory +{sub['peak_mb']:.0f} MB", flush=True)
    shutil.rmtree(folder)
    resume_dir = os.path.join(tmp, "resume")
    os.makedirs(resume_dir)
    c = measure(resume_dir, args.resume_samples, args.resume_shards, args.resume_buffer, 8, 0.9,
                log=lambda line: print("loader: resume: " + line, flush=True))
    out["resume"] = {"samples": c.samples, "pos": c.pos, "range": c.range_size, "bytes_read": c.bytes_read,
                     "seconds": c.seconds, "replay_bytes": c.replay_bytes, "buffer": args.resume_buffer}
    print(f"loader: resume at draw {c.pos:,} of {c.range_size:,} (buffer {args.resume_buffer}): "
          f"{c.bytes_read / 1e6:.3f} MB in {c.seconds:.3f} s to the first step; "
          f"the replay: {c.replay_bytes / 1e6:.1f} MB "
          f"({c.replay_bytes / max(c.bytes_read, 1):,.0f}x more)", flush=True)
    shutil.rmtree(resume_dir)
    return out


# ---------------------------------------------------------------- eval


def source_sample(i: int, image: bytes, label: int) -> dict:
    """Sample i as data_prep writes a validation image: the json member names its source file (what ReaL keys)."""
    key = REAL_KEY.format(i + 1)
    meta = json.dumps({"path": key + ".JPEG"}).encode()
    return {"__key__": key, "jpg": image, "cls": str(label).encode(), "json": meta}


def write_eval_set(folder: str, samples: int, classes: int, per_shard: int = 10_000) -> None:
    """Shards of 32 px JPEGs keyed ILSVRC2012_val_%08d (1-based), label i % classes; real.json of `samples` entries."""
    from tests.helpers_shards import write_manifest, write_shard

    os.makedirs(folder)
    images = tiny_jpegs(64, 32, seed=1)
    names, counts = [], []
    for start in range(0, samples, per_shard):
        count = min(per_shard, samples - start)
        name = f"val-{start // per_shard:04d}.tar"
        write_shard(os.path.join(folder, name), (source_sample(i, images[i % 64], i % classes)
                                                 for i in range(start, start + count)))
        names.append(name)
        counts.append(count)
    write_manifest(folder, names, counts, classes)
    real = [[i % classes] if i % 10 else [i % classes, (i + 1) % classes] for i in range(samples)]
    with open(os.path.join(folder, "real.json"), "w") as f:
        json.dump(real, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_section(args: argparse.Namespace, tmp: str) -> dict:
    folder = os.path.join(tmp, "eval")
    t0 = time.perf_counter()
    write_eval_set(folder, args.eval_samples, args.eval_classes)
    print(f"eval: {args.eval_samples:,} samples written in {time.perf_counter() - t0:.0f} s", flush=True)
    spec = json.dumps({"data": folder, "classes": args.eval_classes, "shots": args.shots})
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "benchmarks" / "bench_scale.py"), "--eval-worker", spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("[rank")]
        raise RuntimeError(f"the 2-rank evaluation failed ({proc.returncode}): " + "\n".join(errors[-30:]))
    ranks = sorted((json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()
                    if line.startswith("SCALE_EVAL ")), key=lambda r: r["rank"])
    for r in ranks:
        print(f"eval rank {r['rank']}: classification {r['val_s']:.1f} s, {r['val']['num_samples']:,} samples, "
              f"ReaL {r['val'].get('real_num_samples')}; few-shot {r['fs_s']:.1f} s, {r['fs_shot_samples']:,} shot "
              f"samples forwarded (load {r['load']})", flush=True)
        for name in ("val", "fs"):
            print(f"     {name}: memory before {r[name + '_base_mb']:.0f} MB, peak {r[name + '_peak_mb']:.0f} MB "
                  f"(the rank's process alone {r[name + '_rank_peak_mb']:.0f} MB)", flush=True)
    return {"samples": args.eval_samples, "classes": args.eval_classes, "shots": args.shots, "ranks": ranks}


def eval_worker(spec: dict) -> None:
    """One rank of the 2-rank evaluation (run by torchrun): both evaluators, seconds and peak memory as JSON."""
    import torch

    from pretrain.cluster.distributed import detect_env, init_distributed, shutdown_distributed
    from pretrain.config import PretrainConfig, load_config
    from pretrain.data import device_preprocess
    from pretrain.evaluators.build import build_evaluators
    from pretrain.run import build_model

    data, shots = spec["data"], "[" + ",".join(map(str, spec["shots"])) + "]"
    cfg = load_config(ROOT / "configs" / "demo.yaml", PretrainConfig, [
        f"data.train={data}", f"model.num_classes={spec['classes']}", "train.precision=fp32",
        "evals.val.type=classification", f"evals.val.data={data}", f"evals.val.real_labels={data}/real.json",
        "evals.fs.type=fewshot", f"evals.fs.train={data}", f"evals.fs.val={data}", f"evals.fs.shots={shots}"])
    env = detect_env()
    init_distributed(env)
    try:
        model = build_model(cfg).to(env.device)
        preprocess = device_preprocess(cfg, torch.float32)
        evaluators = build_evaluators(cfg.evals, cfg, env, exact_classes=True)
        out: dict = {"rank": env.rank}
        for name in ("val", "fs"):
            peak = PeakRss(os.getpid())
            out[f"{name}_base_mb"] = peak.current() / 2**20
            t0 = time.perf_counter()
            result = evaluators[name](model, preprocess)
            out[f"{name}_s"] = time.perf_counter() - t0
            out[f"{name}_peak_mb"] = peak.stop() / 2**20
            out[f"{name}_rank_peak_mb"] = peak.root_peak / 2**20  # the rank's process alone, no loader worker
            out[name] = {k: v for k, v in result.items() if k != "per_class_accuracy"}
        out["fs_shot_samples"] = evaluators["fs"].plan.num_samples  # decoded and forwarded for the probes
        out["load"] = load_average()
        print("SCALE_EVAL " + json.dumps(out), flush=True)
    finally:
        shutdown_distributed()


# ---------------------------------------------------------------- plot


def plot(results: dict, path: str) -> None:
    """docs/benchmarks.md's figure: data_prep's time and peak memory against the image count; resume bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sizes = results.get("prep", {}).get("sizes", [])
    if sizes:
        n = [r["images"] for r in sizes]
        ax = axes[0]
        ax.loglog(n, [r["seconds"] for r in sizes], "o-", label="seconds")
        ax.loglog(n, [sizes[0]["seconds"] * x / n[0] for x in n], "--", color="grey", label="linear in images")
        ax.loglog(n, [r["peak_mb"] for r in sizes], "s-", label="peak MB (process tree)")
        ax.set_xlabel("images (64 px JPEGs, 2 workers)")
        ax.set_title("data_prep build")
        ax.legend()
    resume = results.get("loader", {}).get("resume")
    if resume:
        ax = axes[1]
        ax.bar(["replay (before)", "seek (offset index)"], [resume["replay_bytes"] / 1e6, resume["bytes_read"] / 1e6])
        ax.set_yscale("log")
        ax.set_ylabel("MB read to the first step")
        ax.set_title(f"resume at 90 % of a {resume['samples']:,}-sample epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_scale", description=__doc__.splitlines()[0])
    p.add_argument("--prep", action="store_true", help="the data_prep section")
    p.add_argument("--loader", action="store_true", help="the train loader section")
    p.add_argument("--eval", action="store_true", help="the evaluation section")
    p.add_argument("--prep-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_280_000])
    p.add_argument("--kill-sizes", type=int, nargs="*", default=None, help="default: the largest of --prep-sizes")
    p.add_argument("--kill-at", type=float, default=0.5)
    p.add_argument("--prep-classes", type=int, default=1000)
    p.add_argument("--prep-px", type=int, default=64)
    p.add_argument("--prep-workers", type=int, default=2)
    p.add_argument("--real-images", type=int, default=400, help="500 px JPEGs for the decode-bound rate (0: none)")
    p.add_argument("--loader-shards", type=int, default=10_000)
    p.add_argument("--loader-per-shard", type=int, default=1_400)
    p.add_argument("--loader-classes", type=int, default=21_841)
    p.add_argument("--loader-ranks", type=int, default=64)
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument("--loader-micro-batch", type=int, default=64)
    p.add_argument("--no-subset", dest="subset", action="store_false", help="skip the 10 %% subset selection")
    p.add_argument("--resume-samples", type=int, default=20_000)
    p.add_argument("--resume-shards", type=int, default=20)
    p.add_argument("--resume-buffer", type=int, default=2_000)
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--eval-classes", type=int, default=1_000)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25])
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--plot", default=None, help="draw the PNG here (matplotlib)")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="only draw --plot from figures written before (several files: their sections merged)")
    p.add_argument("--tmp", default=None, help="the scratch folder (default: the system's temporary folder)")
    p.add_argument("--eval-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.prep or args.loader or args.eval):
        args.prep = args.loader = args.eval = True
    if args.kill_sizes is None:
        args.kill_sizes = [max(args.prep_sizes)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.eval_worker is not None:
        eval_worker(json.loads(args.eval_worker))
        return 0
    if args.from_json:
        merged: dict = {}
        for path in args.from_json:
            with open(path) as f:
                merged.update(json.load(f))
        plot(merged, args.plot)
        return 0
    results: dict = {"cpus": os.cpu_count(), "load_start": load_average()}
    print(f"{os.cpu_count()} CPUs, load average {results['load_start']}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name, section in (("prep", prep_section), ("loader", loader_section), ("eval", eval_section)):
            if getattr(args, name):
                results[name] = section(args, tmp)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
