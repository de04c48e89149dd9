"""A ZeRO-3 bf16 stand-in for the trainer's ConViT logging: train steps with `convit_scalars(engine.module, x)` between.

Launched by ``deepspeed`` with two ranks; writes ``rank{N}.json`` into ``--out`` with the scalars of an unwrapped
bf16 copy of the model (the reference), those read through the engine before and after a step, the gating
parameters gathered after that step, the losses of the steps around the calls, and whether the GPSA layers have
the same forward pre-hooks (DeepSpeed's) afterwards.
"""

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

import deepspeed  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pretrain.cluster.distributed import add_launcher_arguments, detect_env, init_distributed  # noqa: E402
from pretrain.telemetry.convit_stats import convit_scalars, gpsa_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    add_launcher_arguments(parser)
    args = parser.parse_args()
    env = detect_env()
    init_distributed(env)
    torch.manual_seed(0)
    model = timm.create_model("convit_tiny", img_size=32, patch_size=4, num_classes=10)
    with torch.no_grad():
        for index, gpsa in gpsa_layers(model):
            gpsa.gating_param.copy_(torch.linspace(-1.0, 2.0, 4) + 0.25 * index)  # exact in bf16
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % 10
    reference = convit_scalars(copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16))
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                      config=config, dist_init_required=False)
    x, losses = x.to(torch.bfloat16), []

    def step() -> None:
        loss = F.cross_entropy(engine(x).float(), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())

    hooks = [len(gpsa._forward_pre_hooks) for _, gpsa in gpsa_layers(engine.module)]  # DeepSpeed's own
    before = convit_scalars(engine.module, x)
    step()
    after = convit_scalars(engine.module, x)
    gating = []
    for _, gpsa in gpsa_layers(engine.module):
        with deepspeed.zero.GatheredParameters([gpsa.gating_param]):
            gating.append(torch.sigmoid(gpsa.gating_param.float()).tolist())
    step()
    step()
    record = dict(reference=reference, before=before, after=after, gating=gating, losses=losses,
                  hooks_kept=hooks == [len(gpsa._forward_pre_hooks) for _, gpsa in gpsa_layers(engine.module)])
    (Path(args.out) / f"rank{env.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
