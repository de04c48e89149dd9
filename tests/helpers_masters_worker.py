"""One process: a bf16 Engine over mixer_demo (ZeRO-0 with bf16 accumulation, or ZeRO-1 with fp32 accumulation:
DeepSpeed's BF16_Optimizer) makes 5 steps with an EMA (decay 0.999) beside two reference EMAs, one of the fp32
masters read from DeepSpeed directly and one of the bf16 working copy; then exports the weights to OUT_DIR and saves
what the test compares to OUT_DIR/result.pt.

    python tests/helpers_masters_worker.py ZERO_STAGE OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param

from pretrain.cluster.distributed import detect_env, free_port, init_distributed, shutdown_distributed
from pretrain.components.ema import EMA
from pretrain.components.engine import Engine
from pretrain.components.export import export_weights
from pretrain.components.masters import Masters
from pretrain.components.run_length import RunLength
from pretrain.config import PretrainConfig, load_config
from pretrain.models import create_model

DECAY = 0.999


def deepspeed_masters(engine: Engine) -> dict[str, torch.Tensor]:
    """The fp32 masters as DeepSpeed keeps them: ZeRO-0's optimizer holds them in `fp32_groups` beside
    `fp16_groups`; otherwise its public `safe_get_full_fp32_param`."""
    opt = engine.ds.optimizer
    if engine.cfg.train.zero_stage == 0:
        by_id = {id(p): m for lows, highs in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                 for p, m in zip(lows, highs, strict=True)}
        return {name: by_id[id(p)].detach().clone() for name, p in engine.module.named_parameters()}
    return {name: safe_get_full_fp32_param(p).detach().clone() for name, p in engine.module.named_parameters()}


def main() -> None:
    stage, out = int(sys.argv[1]), Path(sys.argv[2])
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    overrides = [f"train.zero_stage={stage}", "train.precision=bf16", "train.global_batch=8", "train.micro_batch=4",
                 "data.train=unused", "schedule.warmup_steps=1", "optim.lr=0.01"]
    overrides += ["train.grad_accum_dtype=bf16"] if stage == 0 else []
    cfg = load_config("configs/demo.yaml", PretrainConfig, overrides)
    env = detect_env()
    init_distributed(env)
    torch.manual_seed(0)
    engine = Engine(cfg, env, create_model("mixer_demo", num_classes=10, img_size=32), RunLength(5, 1))
    ema = EMA(engine.module, DECAY, Masters(engine.ds))
    of_masters = deepspeed_masters(engine)
    of_working = {name: p.detach().float().clone() for name, p in engine.module.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        batches = [(torch.randn(4, 3, 32, 32, generator=gen).bfloat16(), torch.randint(0, 10, (4,), generator=gen))
                   for _ in range(2)]
        assert not engine.step(batches).bad
        ema.update()
        for name, w in deepspeed_masters(engine).items():
            of_masters[name].lerp_(w, 1.0 - DECAY)
        for name, p in engine.module.named_parameters():
            of_working[name].lerp_(p.detach().float(), 1.0 - DECAY)
    export_weights(engine.ds, out / "final.safetensors", rank=0)
    torch.save({"ema": ema.state_dict(), "of_masters": of_masters, "of_working": of_working,
                "masters": deepspeed_masters(engine),
                "working": {name: p.detach().clone() for name, p in engine.module.named_parameters()}},
               out / "result.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
