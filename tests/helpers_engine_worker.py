"""One process: an Engine over mixer_demo whose gradient is made infinite on chosen steps while the loss stays
finite; prints, per step, whether it was bad, the lr it used, the schedule's position and whether the weights moved.

    python tests/helpers_engine_worker.py ZERO_STAGE PRECISION BAD_STEPS(comma-separated)
"""

from __future__ import annotations

import json
import os
import sys

import torch
from deepspeed.utils import safe_get_full_fp32_param

from pretrain.cluster.distributed import detect_env, free_port, init_distributed, shutdown_distributed
from pretrain.components.engine import Engine
from pretrain.components.run_length import RunLength
from pretrain.config import PretrainConfig, load_config
from pretrain.models import create_model


def master(engine: Engine) -> torch.Tensor:
    """The fp32 master copy of the head bias (gathered under ZeRO-3)."""
    full = safe_get_full_fp32_param(engine.module.head.bias)
    return (engine.module.head.bias if full is None else full).detach().float().clone()


def main() -> None:
    stage, precision, bad_steps = int(sys.argv[1]), sys.argv[2], {int(s) for s in sys.argv[3].split(",")}
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    overrides = [f"train.zero_stage={stage}", f"train.precision={precision}", "train.global_batch=8",
                 "train.micro_batch=4", "data.train=unused", "schedule.warmup_steps=2", "optim.lr=0.01"]
    if stage == 0 and precision == "bf16":
        overrides.append("train.grad_accum_dtype=bf16")
    cfg = load_config("configs/demo.yaml", PretrainConfig, overrides)
    env = detect_env()
    init_distributed(env)
    torch.manual_seed(0)
    model = create_model("mixer_demo", num_classes=10, img_size=32)
    engine = Engine(cfg, env, model, RunLength(steps=6, warmup_steps=2))
    step = {"now": 0}
    engine.module.head.weight.register_hook(lambda g: g * float("inf") if step["now"] in bad_steps else g)
    dtype = next(engine.module.parameters()).dtype
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = torch.arange(4) % 10
    for k in range(6):
        step["now"] = k
        before = master(engine)
        result = engine.step([(x, y), (x, y)])
        moved = not torch.equal(before, master(engine))
        print(json.dumps({"step": k, "bad": result.bad, "loss_finite": bool(torch.isfinite(result.loss)),
                          "lr": result.lr, "schedule": engine.scheduler.last_epoch, "moved": moved}), flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main()
