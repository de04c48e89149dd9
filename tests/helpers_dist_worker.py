"""A training-script stand-in for the multi-process tests: join the group, all-reduce, agree on preemption.

Launched by ``deepspeed``, ``torchrun`` or as fake Slurm tasks; writes ``rank{N}.json`` into ``--out``. Rank
1 sends itself SIGUSR1 so the test can check that every rank sees the request.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from pretrain.cluster.distributed import add_launcher_arguments, detect_env, init_distributed  # noqa: E402
from pretrain.cluster.preemption import PreemptionFlag, any_rank_requested  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    add_launcher_arguments(parser)
    args = parser.parse_args()
    env = detect_env()
    init_distributed(env)
    total = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(total)
    with PreemptionFlag() as flag:
        if env.rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        stop = any_rank_requested(flag)
        own = flag.requested
    record = dict(rank=env.rank, local_rank=env.local_rank, world_size=env.world_size,
                  local_world_size=env.local_world_size, launcher=env.launcher, backend=env.backend,
                  master_addr=env.master_addr, master_port=env.master_port, group_size=dist.get_world_size(),
                  group_rank=dist.get_rank(), sum=total.item(), own_request=own, stop=stop)
    Path(args.out, f"rank{env.rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
