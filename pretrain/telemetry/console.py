"""A quiet, honest console: DeepSpeed's and torch's start-up chatter stays out of sight unless `logging.verbose`,
and the run says once which device and backend it uses.

What is kept quiet (each looks like an alarm to a newcomer, none is one):
- DeepSpeed's "Setting accelerator to CPU ... unable to detect it": the accelerator is named up front
  (`DS_ACCELERATOR`, unless the user set it), as detected by torch;
- torch's "No CUDA runtime is found" while DeepSpeed loads its CPU ops (logger `torch.utils.cpp_extension`);
- DeepSpeed's prints during start-up (`... built successfully`, the bf16 optimizer's `MA ... CPU Virtual
  Memory` blocks): `start_up_prints` swallows stdout around the process group's and the engine's set-up; its
  logger (which writes to its own handler) stays at WARNING, so its real warnings still show;
- torch's FutureWarning that `all_gather_into_tensor` is deprecated (DeepSpeed calls it, not us);
- DeepSpeed's "You are using ZeRO with an untested optimizer" (torch's SGD, handed over on purpose).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pretrain.cluster.distributed import DistEnv
    from pretrain.config import PretrainConfig

LIBRARY_LOGGERS = ("DeepSpeed", "deepspeed", "torch.distributed", "torch.utils.cpp_extension")


def name_accelerator() -> None:
    """Tell DeepSpeed the accelerator torch finds (unless the user did), before anything imports DeepSpeed: it
    would otherwise guess, and warn on a CPU that it found no GPU. The entry points call it first thing."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def quiet_libraries(verbose: bool) -> None:
    """Call before DeepSpeed is imported: name the accelerator, silence the deprecation and the CUDA-probe warnings.
    `verbose` (the config's `logging.verbose`): leave every library as it is."""
    if verbose:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    name_accelerator()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*reduce_op.*deprecated.*", category=FutureWarning)


def _not_known_news(record: logging.LogRecord) -> bool:
    """False for DeepSpeed's warning about a ZeRO optimizer it has not tested: we hand it torch's SGD knowingly
    (`zero_allow_untested_optimizer`, pretrain/config/deepspeed.py), and it reads as an alarm."""
    return "untested optimizer" not in record.getMessage()


def quiet_deepspeed_logger(verbose: bool) -> None:
    """DeepSpeed (re)creates its logger at import at INFO for some versions: back to WARNING, and without the
    untested-optimizer warning, unless `verbose`."""
    logger = logging.getLogger("DeepSpeed")
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logger.removeFilter(_not_known_news)
    elif _not_known_news not in logger.filters:
        logger.addFilter(_not_known_news)


@contextlib.contextmanager
def start_up_prints(verbose: bool) -> Iterator[None]:
    """Swallow what libraries print() to stdout in the block (logging and stderr are untouched) unless `verbose`."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def describe_env(env: DistEnv, cfg: PretrainConfig) -> str:
    """One line: how many ranks on which device, the backend, the precision and the ZeRO stage."""
    ranks = f"{env.world_size} rank{'s' if env.world_size != 1 else ''}"
    device = "the CPU" if env.device.type == "cpu" else f"{env.device.type} devices"
    return (f"{ranks} on {device} ({env.backend} backend, {env.launcher} launcher), {cfg.train.precision}, "
            f"ZeRO stage {cfg.train.zero_stage}: starting the process group")
