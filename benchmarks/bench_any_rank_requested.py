"""Cost of the per-step preemption agreement (one all-reduce) in a real process group.

    .venv/bin/torchrun --nproc_per_node 2 benchmarks/bench_any_rank_requested.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, as torchrun runs a file

import torch.distributed as dist  # noqa: E402

from pretrain.cluster.distributed import detect_env, init_distributed  # noqa: E402
from pretrain.cluster.preemption import PreemptionFlag, any_rank_requested  # noqa: E402


def main() -> None:
    env = detect_env()
    init_distributed(env)
    with PreemptionFlag() as flag:
        for _ in range(50):
            any_rank_requested(flag)
        calls = 2000
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            any_rank_requested(flag)
        seconds = time.perf_counter() - start
    if env.is_main:
        per_call = seconds / calls * 1e6
        print(f"any_rank_requested, {env.world_size} ranks, {env.backend}: {per_call:.0f} us per call")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
