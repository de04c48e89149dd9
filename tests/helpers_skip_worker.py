"""One process: an fp32 Engine over mixer_demo makes 4 steps of 2 micro-batches, the second micro-batch of step 2
holding a NaN pixel (its loss and the step's gradient are not finite, the first micro-batch's are); saves the bad
flags, the weights, Adam's moments and step counts to OUT. No gradient clipping: ZeRO-0 and ZeRO-1 compute the
norm in different orders, so their clipped updates differ in the last bit.

    python tests/helpers_skip_worker.py ZERO_STAGE OUT
"""

from __future__ import annotations

import os
import sys

import torch
from deepspeed.utils import safe_get_full_fp32_param

from pretrain.cluster.distributed import detect_env, free_port, init_distributed, shutdown_distributed
from pretrain.components.engine import Engine
from pretrain.components.run_length import RunLength
from pretrain.config import PretrainConfig, load_config
from pretrain.models import create_model

KEYS = ("exp_avg", "exp_avg_sq")


def optimizer_steps(engine: Engine) -> list[int]:
    """The step count of every optimizer state the torch optimizer holds (per parameter, or per flat partition)."""
    opt = engine.ds.optimizer
    torch_opt = getattr(opt, "optimizer", opt)
    return sorted(int(state["step"]) for state in torch_opt.state.values())


def zero1_moments(engine: Engine) -> dict[str, dict[str, torch.Tensor]]:
    """Adam's moments per parameter under ZeRO-1 on one rank, cut from each group's one flat fp32 partition
    (DeepSpeed 0.19's `safe_get_full_optimizer_state` links the state of the first parameter group only)."""
    opt, names = engine.ds.optimizer, {p: name for name, p in engine.module.named_parameters()}
    out = {}
    for params, flat in zip(opt.bit16_groups, opt.single_partition_of_fp32_groups, strict=True):
        state, offset = opt.optimizer.state[flat], 0
        for p in params:
            out[names[p]] = {k: state[k][offset:offset + p.numel()].view_as(p).clone() for k in KEYS}
            offset += p.numel()
    return out


def main() -> None:
    stage, out = int(sys.argv[1]), sys.argv[2]
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    cfg = load_config("configs/demo.yaml", PretrainConfig, [
        f"train.zero_stage={stage}", "train.precision=fp32", "train.global_batch=8", "train.micro_batch=4",
        "data.train=unused", "schedule.warmup_steps=1", "optim.lr=0.01", "optim.name=adamw", "optim.grad_clip=0"])
    env = detect_env()
    init_distributed(env)
    torch.manual_seed(0)
    engine = Engine(cfg, env, create_model("mixer_demo", num_classes=10, img_size=32), RunLength(steps=4,
                                                                                               warmup_steps=1))
    gen = torch.Generator().manual_seed(1)
    bad = []
    for k in range(4):
        batches = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))
                   for _ in range(2)]
        if k == 2:
            batches[1][0][0, 0, 0, 0] = float("nan")
        bad.append(engine.step(batches).bad)
    named = list(engine.module.named_parameters())
    moments = zero1_moments(engine) if stage else {
        name: {k: engine.ds.optimizer.state[p][k].clone() for k in KEYS} for name, p in named}
    weights = {name: (p if stage == 0 else safe_get_full_fp32_param(p)).detach().clone() for name, p in named}
    torch.save({"bad": bad, "weights": weights, "moments": moments, "steps": optimizer_steps(engine),
                "schedule": engine.scheduler.last_epoch}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
