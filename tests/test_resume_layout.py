"""A run resumed on another world size and ZeRO stage, through DeepSpeed's universal checkpoint
(pretrain/components/universal/).

Pinned with real runs, launched as users launch them: the step-6 checkpoint of a 2-rank ZeRO-1 bf16 run resumes on
1 rank with ZeRO-1, on 2 ranks with ZeRO-3 and on 1 rank with ZeRO-0 (bf16 accumulation, as that stage needs).
Each converts it once into `step-00000006.universal` beside it, whose Adam moments and fp32 weights are, bit for
bit, the original's gathered from both ranks' partitions; each continues with the same schedule, step counters and
samples (its step-12 checkpoint holds the uninterrupted run's data position) and its loss follows the uninterrupted
run's within bf16 noise; the step-12 checkpoints they write (ZeRO-1, ZeRO-3, ZeRO-0 formats) convert to the
uninterrupted run's state, Adam's step included. Units: which layout changes convert, the random streams of a rank
the checkpoint lacks, a refused conversion (one line, nothing left that looks converted), pruning of converted
copies.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain.components.checkpoint import Checkpointer, CheckpointError
from pretrain.components.rng_state import RNGStates, rng_state, seed_rank
from pretrain.components.universal import engine_layout, layout_changes
from pretrain.components.universal.convert import ensure_universal
from pretrain.components.universal.files import read_param
from pretrain.models import create_model
from tests.helpers_runs import ROOT, command, env, failure, scalars, write_config

PRETRAIN = "launch/pretrain.py"
STEP6, STEP12 = "step-00000006", "step-00000012"
RESUMES = {  # name: (ranks, overrides); the global batch stays 64, the accumulation follows the world size
    "zero1_1rank": (1, []),
    "zero3_2ranks": (2, ["train.zero_stage=3"]),
    "zero0_1rank": (1, ["train.zero_stage=0", "train.grad_accum_dtype=bf16"]),
}
BF16_NOISE = 1e-3  # largest loss difference seen over the 6 resumed steps: 3e-4 (a wrong moment: 2e-2)


def model_states(checkpoint: Path) -> dict:
    """The client state DeepSpeed saved with a checkpoint (rank 0's file under ZeRO-3)."""
    path = next(p for p in (checkpoint / "mp_rank_00_model_states.pt",
                            checkpoint / "zero_pp_rank_0_mp_rank_00_model_states.pt") if p.is_file())
    return torch.load(path, map_location="cpu", weights_only=False)


def gathered_moments(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 weights, exp_avg and exp_avg_sq of every parameter, gathered from the ZeRO-1 ranks' flat partitions by
    their slice mappings (in rank order), at the parameters' shapes."""
    shapes = {name: t.shape for name, t in load_file(checkpoint / "model.safetensors").items()}
    pieces: dict[str, dict[str, list[torch.Tensor]]] = {}
    for path in sorted(checkpoint.glob("*zero_pp_rank_*_optim_states.pt")):
        sd = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for g, mapping in enumerate(sd["param_slice_mappings"]):
            flat = {"fp32": sd["single_partition_of_fp32_groups"][g], **sd["base_optimizer_state"]["state"][g]}
            for name, fragment in mapping.items():
                for key in ("fp32", "exp_avg", "exp_avg_sq"):
                    pieces.setdefault(name, {}).setdefault(key, []).append(
                        flat[key].narrow(0, fragment.start, fragment.numel))
    return {name: {k: torch.cat(v).reshape(shapes[name]) for k, v in d.items()} for name, d in pieces.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shards) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The uninterrupted 2-rank ZeRO-1 run (checkpoints at 6 and 12), and its step-6 checkpoint resumed on each
    layout of RESUMES, all three at once (as if killed after step 6: `latest` on it, the later files gone)."""
    tmp = tmp_path_factory.mktemp("layout")
    cfg = write_config(tmp / "cfg.yaml", "configs/demo.yaml", {
        "data.train": str(shards), "data.workers": 1, "train.steps": 12, "checkpoint.every_steps": 6,
        "checkpoint.keep": 3, "logging.every_steps": 1, "logging.image_every_steps": 0})
    started = time.monotonic()
    out: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}
    ref = tmp / "uninterrupted"
    proc = subprocess.run(command(PRETRAIN, 2, "--config", str(cfg), "--run-dir", str(ref)), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, failure(proc)
    out["uninterrupted"] = (ref, proc)
    jobs = {}
    for name, (ranks, overrides) in RESUMES.items():
        run_dir = tmp / name
        shutil.copytree(ref, run_dir)
        shutil.rmtree(run_dir / "checkpoints" / STEP12)
        shutil.rmtree(run_dir / "tensorboard")
        (run_dir / "final.safetensors").unlink()
        (run_dir / "checkpoints" / "latest").write_text(STEP6 + "\n")
        args = ["--config", str(cfg), "--run-dir", str(run_dir), "--resume", "auto"]
        args += ["--set", *overrides] if overrides else []
        log = (tmp / f"{name}.log").open("w+")
        jobs[name] = (run_dir, log, subprocess.Popen(command(PRETRAIN, ranks, *args), cwd=ROOT, env=env(),
                                                     stdout=log, stderr=subprocess.STDOUT, text=True))
    for name, (run_dir, log, job) in jobs.items():
        code = job.wait(timeout=400)
        log.seek(0)
        out[name] = (run_dir, subprocess.CompletedProcess(job.args, code, log.read(), ""))
        log.close()
    print(f"uninterrupted run and three resumes: {time.monotonic() - started:.0f} s")
    return out


@pytest.mark.parametrize("name", list(RESUMES))
def test_resume_on_another_layout_continues_the_uninterrupted_run(runs, name):
    ref, _ = runs["uninterrupted"]
    run_dir, proc = runs[name]
    assert proc.returncode == 0, failure(proc)
    assert "resumed from step 6" in proc.stdout, failure(proc)
    assert "loading it through its universal copy step-00000006.universal (converting it now)" in proc.stdout
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [STEP6, STEP6 + ".universal", STEP12]

    ours, theirs = scalars(run_dir), scalars(ref)
    assert [s for s, _ in ours["train/loss"]] == list(range(7, 13))
    pairs = zip(ours["train/loss"], theirs["train/loss"][6:], strict=True)
    print(name, "largest loss difference", max(abs(a - b) for (_, a), (_, b) in pairs))
    assert [v for _, v in ours["train/loss"]] == pytest.approx([v for _, v in theirs["train/loss"][6:]],
                                                                abs=BF16_NOISE)
    for tag in ("train/lr", "train/samples_seen"):  # the schedule and the counters carried over exactly
        assert ours[tag] == theirs[tag][6:], tag

    resumed, uninterrupted = model_states(checkpoints / STEP12), model_states(ref / "checkpoints" / STEP12)
    assert resumed["data"] == uninterrupted["data"]  # every stream at the same raw position: the same samples
    assert resumed["train_state"] == uninterrupted["train_state"]
    assert resumed["global_steps"] == uninterrupted["global_steps"] == 12


def test_the_converted_copy_holds_the_original_moments_gathered_from_both_ranks(runs):
    run_dir, proc = runs["zero0_1rank"]
    assert proc.returncode == 0, failure(proc)
    original = gathered_moments(run_dir / "checkpoints" / STEP6)
    weights = load_file(run_dir / "checkpoints" / STEP6 / "model.safetensors")
    assert len(original) == len(weights) == 54
    for name in RESUMES:
        copy = runs[name][0] / "checkpoints" / (STEP6 + ".universal")
        for param, full in original.items():
            converted = read_param(copy, param)
            assert float(converted["step"]) == 6.0
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                assert torch.equal(converted[key], full[key]), (name, param, key)
            assert torch.equal(converted["fp32"], weights[param])  # the exported fp32 weights are the masters


def test_checkpoints_of_every_stage_convert_to_the_state_of_the_uninterrupted_run(runs, tmp_path):
    """The step-12 checkpoints the resumed runs wrote (ZeRO-1 on 1 rank, ZeRO-3 on 2, ZeRO-0 bf16 on 1: three more
    of DeepSpeed's formats) convert to the uninterrupted run's weights and moments, each parameter under its own
    name, and with Adam's step at 12; the fp32 masters are the weights each run exported (ZeRO-0 bf16 too). ZeRO-1
    on 1 rank sums the two micro-batches' fp32 gradients as the 2 ranks do: bit for bit. The other two reduce in
    bf16: within its noise, except for the token-mixing fc2 biases, a per-token shift that every LayerNorm after it
    removes: their true gradient is zero, what they get is rounding."""
    reference = gathered_moments(runs["uninterrupted"][0] / "checkpoints" / STEP12)
    model = create_model("mixer_demo", num_classes=10, img_size=32)
    for name in RESUMES:
        source = tmp_path / name
        shutil.copytree(runs[name][0] / "checkpoints" / STEP12, source)
        copy = ensure_universal(source, 0, model)
        exported = load_file(source / "model.safetensors")
        worst = dict.fromkeys(("fp32", "exp_avg", "exp_avg_sq"), 0.0)
        for param, full in reference.items():
            converted = read_param(copy, param)
            assert float(converted["step"]) == 12.0, (name, param)
            assert torch.equal(converted["fp32"], exported[param]), (name, param)
            if name == "zero1_1rank":
                assert all(torch.equal(converted[k], full[k]) for k in worst), (name, param)
            elif "mlp_tokens.fc2.bias" not in param:
                for key in worst:
                    error = (converted[key] - full[key]).norm() / full[key].norm()
                    worst[key] = max(worst[key], error.item())
        assert max(worst.values()) < 0.25, (name, worst)  # measured: 0.11 (ZeRO-3), 0 (ZeRO-0)


def test_which_layout_changes_convert():
    zero1_on_2 = {"world_size": 2, "zero_stage": 1}  # a checkpoint written before precision was recorded
    assert layout_changes(zero1_on_2, {"world_size": 1, "zero_stage": 1, "precision": "bf16"}) == ["world_size"]
    assert layout_changes(zero1_on_2, {"world_size": None, "zero_stage": 0}) == ["world_size", "zero_stage"]
    assert layout_changes(zero1_on_2, {"world_size": 2, "zero_stage": 3}) == ["zero_stage"]
    zero0 = {"world_size": None, "zero_stage": 0, "precision": "fp32"}  # ZeRO-0 checkpoints fit any world size
    assert layout_changes(zero0, {"world_size": None, "zero_stage": 0, "precision": "fp32"}) == []
    assert layout_changes(zero0, {"world_size": None, "zero_stage": 0, "precision": "bf16"}) == ["precision"]


class _DataTypes:
    def __init__(self, model: torch.dtype, accum: torch.dtype) -> None:
        self.types = (model, accum)

    def get_data_types(self) -> tuple[torch.dtype, torch.dtype]:
        return self.types


def test_the_engine_adds_its_precision_to_the_layout(tmp_path):
    assert engine_layout(_DataTypes(torch.bfloat16, torch.float32)) == {"precision": "bf16", "grad_accum_dtype": "fp32"}
    assert engine_layout(_DataTypes(torch.float32, torch.float32)) == {"precision": "fp32", "grad_accum_dtype": None}
    assert engine_layout(None) == {}
    checkpointer = Checkpointer(tmp_path, keep=1, rank=0, engine=_DataTypes(torch.bfloat16, torch.bfloat16),
                                meta={"world_size": None, "zero_stage": 0})
    assert checkpointer.expect == {"world_size": None, "zero_stage": 0, "precision": "bf16", "grad_accum_dtype": "bf16"}


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_a_rank_the_checkpoint_lacks_gets_derived_streams():
    seed_rank(7, 0)
    torch.rand(5)
    saved = [rng_state()]  # a checkpoint of a 1-rank run
    torch.rand(5)
    later = [rng_state()]  # a later checkpoint of it

    first = RNGStates(7, rank=1)
    first.load_state_dict(saved)
    derived = draws()
    RNGStates(7, rank=1).load_state_dict(saved)
    assert draws() == derived  # the same on every resume from that checkpoint
    seed_rank(7, 1)
    assert draws() != derived  # not the streams a fresh run gives rank 1 (replayed after 2 -> 1 -> 2 ranks)
    RNGStates(7, rank=1).load_state_dict(later)
    assert draws() != derived  # each checkpoint its own
    RNGStates(7, rank=0).load_state_dict(saved)
    seed_rank(7, 0)
    torch.rand(5)
    expected = draws()
    RNGStates(7, rank=0).load_state_dict(saved)
    assert draws() == expected  # a rank the checkpoint has continues its own streams


class _Engine:
    """Enough of an engine for a restore that fails before DeepSpeed is needed."""

    def __init__(self) -> None:
        self.module = nn.Linear(2, 2)


def test_a_refused_conversion_is_one_line_and_leaves_nothing_that_looks_converted(tmp_path):
    ckpt = tmp_path / "step-00000002"
    ckpt.mkdir()
    save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, ckpt / "model.safetensors")
    sgd = {"state": {0: {"step": torch.tensor(2.0), "momentum_buffer": torch.zeros(6)}}, "param_groups": []}
    torch.save({"optimizer_state_dict": {"base_optimizer_state": sgd}},
               ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (ckpt / "meta.json").write_text(json.dumps({"model": "m", "world_size": 2, "zero_stage": 1, "step": 2}))
    (tmp_path / "latest").write_text("step-00000002\n")
    (tmp_path / "step-00000002.universal.partial" / "universal" / "zero").mkdir(parents=True)  # a killed conversion

    checkpointer = Checkpointer(tmp_path, keep=2, rank=0, engine=_Engine(),
                                meta={"model": "m", "world_size": None, "zero_stage": 0})
    with pytest.raises(CheckpointError) as err:
        checkpointer.restore()
    assert str(err.value) == (
        f"cannot resume checkpoint {ckpt} (written with world_size=2, zero_stage=1) with zero_stage=0 (world_size, "
        "zero_stage differ): its optimizer state holds momentum_buffer; DeepSpeed's universal checkpoint carries "
        "Adam's exp_avg/exp_avg_sq only (optim.name adamw, without amsgrad); resume with world_size=2, zero_stage=1 "
        "or start a new run dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000002"]


def test_converted_copies_are_pruned_with_their_checkpoints(tmp_path):
    for tag in ("step-00000001", "step-00000002", "step-00000003"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "meta.json").write_text('{"run_id": "r"}')
        (tmp_path / f"{tag}.universal" / "zero").mkdir(parents=True)
    (tmp_path / "step-00000004.universal.partial").mkdir()  # a killed conversion
    (tmp_path / "step-00000004.universal.failed-0123abcd").write_text("x")  # a failed one's message, kept by a crash
    ckpt = Checkpointer(tmp_path, keep=2, rank=0)
    ckpt.run_id = "r"
    ckpt._prune(keep_tag="step-00000003")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000002", "step-00000002.universal", "step-00000003", "step-00000003.universal"]
