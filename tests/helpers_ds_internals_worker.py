"""One process: tiny real DeepSpeed engines, checked for every private part `pretrain/components/ds_internals.py`
relies on; prints one JSON object {check: true/false or a value} for tests/test_ds_internals.py.

    python tests/helpers_ds_internals_worker.py layout OUT_DIR        # CPU: ZeRO 0/1/3, fp32 and bf16
    python tests/helpers_ds_internals_worker.py loss_scale OUT_DIR    # CUDA: fp16 ZeRO-0 <-> ZeRO-1 resumes
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import torch

from pretrain.cluster.distributed import detect_env, free_port, init_distributed, shutdown_distributed
from pretrain.components import ds_internals as dsi
from pretrain.components.checkpoint import Checkpointer
from pretrain.components.engine import Engine
from pretrain.components.export import export_weights
from pretrain.components.run_length import RunLength
from pretrain.components.universal.files import WEIGHTS
from pretrain.config import PretrainConfig, load_config
from pretrain.models import create_model


def engine(stage: int, precision: str, env) -> Engine:
    overrides = [f"train.zero_stage={stage}", f"train.precision={precision}", "train.global_batch=8",
                 "train.micro_batch=4", "data.train=unused", "schedule.warmup_steps=2", "optim.lr=0.01"]
    if stage == 0 and precision != "fp32":
        overrides.append(f"train.grad_accum_dtype={precision}")
    cfg = load_config("configs/demo.yaml", PretrainConfig, overrides)
    torch.manual_seed(0)
    return Engine(cfg, env, create_model("mixer_demo", num_classes=10, img_size=32), RunLength(steps=8, warmup_steps=2))


def steps(eng: Engine, n: int, overflow: set[int] = frozenset()) -> None:
    """`n` optimizer steps on a fixed batch; an infinite gradient on the steps in `overflow`."""
    now = {"k": 0}
    handle = eng.module.head.weight.register_hook(lambda g: g * float("inf") if now["k"] in overflow else g)
    dtype = next(eng.module.parameters()).dtype
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(eng.env.device, dtype)
    y = (torch.arange(4) % 10).to(eng.env.device)
    for k in range(n):
        now["k"] = k
        eng.step([(x, y), (x, y)])
    handle.remove()


def layout(out: Path, env) -> dict:
    facts: dict = {}
    kept = {}
    # ZeRO-0: the bare torch optimizer, the bf16 wrapper; ZeRO-1 bf16: BF16_Optimizer; ZeRO 1/3 fp32: the ZeRO ones
    for stage, precision in ((0, "fp32"), (0, "bf16"), (1, "bf16"), (1, "fp32"), (3, "fp32")):
        name = f"zero{stage}_{precision}"
        eng = engine(stage, precision, env)
        ds = eng.ds
        steps(eng, 2)
        facts[f"{name}: engine has {', '.join(dsi.STEP_COUNTERS)}"] = all(
            isinstance(getattr(ds, k, None), int) for k in dsi.STEP_COUNTERS)
        ds.save_checkpoint(str(out / name), tag="t", client_state=dsi.universal_checkpoint_info(), save_latest=False)
        folder = out / name / "t"
        export_weights(ds, folder / WEIGHTS, env.rank)
        kept[name] = (eng, folder)
        states_file = folder / (dsi.ZERO3_MODEL_STATES if stage == 3 else dsi.MODEL_STATES)
        facts[f"{name}: writes {states_file.name}"] = states_file.is_file()
        states = torch.load(states_file, map_location="cpu", weights_only=False)
        facts[f"{name}: model states hold {dsi.STEP_COUNTERS}, lr_scheduler, optimizer, ds_version"] = all(
            k in states for k in (*dsi.STEP_COUNTERS, "lr_scheduler", "optimizer", "ds_version"))
        set_counters = {"global_steps": 7, "global_samples": 56, "skipped_steps": 1}
        dsi.set_step_counters(ds, set_counters)
        facts[f"{name}: set_step_counters"] = [getattr(ds, k) for k in dsi.STEP_COUNTERS] == [7, 56, 1]
        with dsi.universal_loading(ds):
            inside = ds.load_universal_checkpoint()
        facts[f"{name}: universal_loading toggles engine.load_universal_checkpoint()"] = (
            inside is True and ds.load_universal_checkpoint() is False)
        facts[f"{name}: loss_scale_of is None without fp16"] = dsi.loss_scale_of(ds.optimizer) is None
        if stage == 0:
            sd = states["optimizer"]
            wrapped = precision != "fp32"
            facts[f"{name}: ZeRO-0 optimizer state keys"] = (
                (dsi.WRAPPED_STATE in sd and dsi.MASTERS[0] in sd) if wrapped else {"state", "param_groups"} <= set(sd))
            facts[f"{name}: no optim_states files"] = not any(folder.glob(dsi.OPTIM_STATES_GLOB))
        else:
            [optim_file, *_] = sorted(folder.glob(dsi.OPTIM_STATES_GLOB))
            sd = torch.load(optim_file, map_location="cpu", weights_only=False)[dsi.WRAPPED_STATE]
            base = dsi.BASE_OPTIMIZER_STATE if stage < 3 else dsi.WRAPPED_STATE
            facts[f"{name}: optim_states hold {base}"] = base in sd
            if precision == "fp32":  # the ZeRO optimizers, as under fp16
                facts[f"{name}: optim_states hold loss_scaler, dynamic_loss_scale"] = all(
                    k in sd for k in ("loss_scaler", "dynamic_loss_scale"))
                facts[f"{name}: a static loss_scaler with cur_scale"] = (
                    hasattr(sd.get("loss_scaler"), "cur_scale") and sd.get("dynamic_loss_scale") is False)
                facts[f"{name}: the live optimizer has loss_scaler"] = hasattr(ds.optimizer, "loss_scaler")
            dsi.convert_to_universal(folder, out / f"{name}.universal")
            facts[f"{name}: convert_to_universal writes zero/{dsi.OPTIMIZER_STATE}"] = (
                out / f"{name}.universal" / "zero" / dsi.OPTIMIZER_STATE).is_file()
    load = inspect.signature(type(ds).load_checkpoint).parameters
    save = inspect.signature(type(ds).save_checkpoint).parameters
    facts["engine.load_checkpoint(load_dir, tag, load_optimizer_states, load_lr_scheduler_states)"] = all(
        k in load for k in ("load_dir", "tag", "load_optimizer_states", "load_lr_scheduler_states"))
    facts["engine.save_checkpoint(save_dir, tag, client_state, save_latest)"] = all(
        k in save for k in ("save_dir", "tag", "client_state", "save_latest"))
    return {"internals": facts, "carry": carry(out, kept)}


def carry(out: Path, kept: dict) -> dict:
    """The dynamic loss scale through the universal copy, on CPU: an fp16 ZeRO-0 state (FP16_Optimizer's keys put
    into the bf16 ZeRO-0 checkpoint) and a ZeRO-1 one (a dynamic scaler put into the fp32 ZeRO-1 checkpoint) are
    converted; each copy is repaired into the other stage's live engine, its scaler made dynamic as under fp16."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    from pretrain.components.universal.convert import convert
    from pretrain.components.universal.files import LOSS_SCALE, read_optimizer_state
    from pretrain.components.universal.load import repair

    (zero0, folder0), (zero1, folder1) = kept["zero0_bf16"], kept["zero1_fp32"]
    states = torch.load(folder0 / dsi.MODEL_STATES, map_location="cpu", weights_only=False)
    states["optimizer"].update(dynamic_loss_scale=True, cur_scale=512.0, cur_iter=7, last_overflow_iter=5,
                               scale_factor=2.0, scale_window=1000)
    torch.save(states, folder0 / dsi.MODEL_STATES)
    [optim_file] = sorted(folder1.glob(dsi.OPTIM_STATES_GLOB))
    optim = torch.load(optim_file, map_location="cpu", weights_only=False)
    scaler = DynamicLossScaler(init_scale=2.0 ** 5, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    scaler.cur_iter, scaler.last_overflow_iter, scaler.cur_hysteresis = 9, 8, 1
    optim[dsi.WRAPPED_STATE].update(loss_scaler=scaler, dynamic_loss_scale=True)
    torch.save(optim, optim_file)
    copies = {}
    for name, (eng, folder) in (("zero0", kept["zero0_bf16"]), ("zero1", kept["zero1_fp32"])):
        copies[name] = out / f"{name}.carry.universal"
        convert(folder, copies[name], eng.module)
    zero1.ds.optimizer.loss_scaler = DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1,
                                                       delayed_shift=2, consecutive_hysteresis=False)
    zero0.ds.optimizer.loss_scale_config.dynamic_loss_scale = True
    repair(zero1.ds, copies["zero0"], folder0)
    repair(zero0.ds, copies["zero1"], folder1)
    return {"zero0 copy": read_optimizer_state(copies["zero0"]).get(LOSS_SCALE),
            "zero1 copy": read_optimizer_state(copies["zero1"]).get(LOSS_SCALE),
            "zero0 -> zero1 engine": dsi.loss_scale_of(zero1.ds.optimizer),
            "zero1 -> zero0 engine": dsi.loss_scale_of(zero0.ds.optimizer)}


def loss_scale(out: Path, env) -> dict:
    """fp16: ZeRO-0 with two overflows, saved, resumed on ZeRO-1; ZeRO-1 with three, resumed on ZeRO-0."""
    facts = {}
    for source, target in ((0, 1), (1, 0)):
        eng = engine(source, "fp16", env)
        steps(eng, 4, overflow={1, 2, 3} if source else {1, 2})
        saved = dsi.loss_scale_of(eng.ds.optimizer)
        meta = {"model": "mixer_demo", "world_size": None if source == 0 else env.world_size, "zero_stage": source}
        folder = out / f"zero{source}_to_zero{target}"
        Checkpointer(folder, keep=2, rank=env.rank, engine=eng.ds, meta=meta).save(4)
        fresh = engine(target, "fp16", env)
        default = dsi.loss_scale_of(fresh.ds.optimizer)
        meta = {**meta, "zero_stage": target, "world_size": None if target == 0 else env.world_size}
        Checkpointer(folder, keep=2, rank=env.rank, engine=fresh.ds, meta=meta).restore()
        facts[f"zero{source}->zero{target}"] = {"saved": saved, "default": default,
                                                 "restored": dsi.loss_scale_of(fresh.ds.optimizer)}
    return facts


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    env = detect_env()
    init_distributed(env)
    facts = layout(out, env) if mode == "layout" else loss_scale(out, env)
    print("FACTS " + json.dumps(facts), flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main()
