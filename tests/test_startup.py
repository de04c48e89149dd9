"""Start-up checks against the data and the run length: loader workers the samples allow, a warmup that fits."""

import itertools
import logging

import pytest

from pretrain.components.run_length import RunLength, resolve_run_length
from pretrain.config import ConfigError, PretrainConfig
from pretrain.config.startup import check_warmup, check_workers, max_workers
from pretrain.data import build_train_loader, load_manifest, train_transform
from pretrain.data.manifest import Manifest, Shard
from pretrain.data.streams import make_layout
from tests.helpers_shards import write_dataset


def manifest(*sizes: int) -> Manifest:
    shards = tuple(Shard(f"s{i}.tar", f"/d/s{i}.tar", n, 0, "") for i, n in enumerate(sizes))
    return Manifest("/d/manifest.json", sum(sizes), 10, tuple(f"c{i}" for i in range(10)), shards)


def config(workers: int, global_batch: int, micro_batch: int, train: str = "/d") -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.data.train, cfg.data.workers = train, workers
    cfg.train.global_batch, cfg.train.micro_batch = global_batch, micro_batch
    return cfg


def error_of(m: Manifest, cfg: PretrainConfig, world_size: int) -> str:
    with pytest.raises(ConfigError) as info:
        check_workers(m, cfg, world_size)
    return str(info.value)


def test_too_many_workers_names_data_workers_and_the_largest_that_works():
    m = manifest(3000, 3000, 4000)  # 10000 samples; global batch 4096: at most 2 workers
    assert error_of(m, config(3, 4096, 64), 16) == (
        "`data.workers`: 3 is too many for the 10000 training samples of /d: 64 micro-batches per step x 3 workers "
        "= 192 streams of 52 samples per epoch, fewer than train.micro_batch 64; use data.workers <= 2 (samples // "
        "train.global_batch)")
    for workers in (0, 1, 2):
        check_workers(m, config(workers, 4096, 64), 16)


def test_fewer_samples_than_a_global_batch_names_train_global_batch():
    assert error_of(manifest(1000), config(0, 4096, 64), 2) == (
        "`train.global_batch`: 4096 is more than the 1000 training samples of /d: each of its 64 micro-batches per "
        "step reads its own range of every epoch, which would hold 15 samples, fewer than train.micro_batch 64; use "
        "train.global_batch <= 896 (a multiple of train.micro_batch x world size = 128)")
    assert error_of(manifest(1000), config(0, 4096, 64), 16).endswith(
        "use a train.micro_batch of at most 62, or more data")  # 16 x 64 = 1024 samples is more than there are


def test_the_check_fails_exactly_when_the_loader_layout_would():
    """The only constraint is the loader's: every one of the V x W streams gets a micro-batch of samples per
    epoch. The world size and the number of shards play no part (streams cut the concatenation of the shards)."""
    for n, workers, (global_batch, micro_batch), world in itertools.product(
            (7, 12, 64, 100, 257), (0, 1, 2, 3, 8), ((8, 2), (12, 4), (16, 16), (64, 8)), (1, 2, 4)):
        if global_batch % (micro_batch * world):
            continue
        accum = global_batch // (micro_batch * world)
        try:
            make_layout(n, micro_batch=micro_batch, accum=accum, world_size=world, workers=workers, seed=0)
            layout_ok = True
        except ValueError:
            layout_ok = False
        for sizes in ((n,), (1,) * n if n < 20 else (n - 3, 1, 1, 1)):
            try:
                check_workers(manifest(*sizes), config(workers, global_batch, micro_batch), world)
                check_ok = True
            except ConfigError:
                check_ok = False
            assert check_ok == layout_ok, (n, workers, global_batch, micro_batch, world, sizes)
            assert layout_ok == (max(workers, 1) <= max_workers(n, global_batch)), (n, workers, global_batch)


@pytest.mark.timeout(120)
def test_one_shard_feeds_more_workers_than_shards(tmp_path):
    """Streams share shards: one 12-sample shard, 2 loader workers x 3 virtual ranks = 6 streams of 2 samples,
    micro-batch 2 - the loader delivers steps; one worker more and the layout refuses, as check_workers says."""
    m = load_manifest(write_dataset(str(tmp_path), [12]))
    check_workers(m, config(2, 6, 2, str(tmp_path)), 1)
    args = dict(micro_batch=2, accum=3, rank=0, world_size=1, seed=0, transform=train_transform(16),
                shuffle_buffer=0)
    loader = build_train_loader(m, workers=2, **args)
    try:
        assert [next(loader)["step"] for _ in range(4)] == [0, 1, 2, 3]
    finally:
        loader.close()
    assert error_of(m, config(3, 6, 2, str(tmp_path)), 1) == (
        f"`data.workers`: 3 is too many for the 12 training samples of {tmp_path}: 3 micro-batches per step x 3 "
        "workers = 9 streams of 1 sample per epoch, fewer than train.micro_batch 2; use data.workers <= 2 (samples "
        "// train.global_batch)")
    with pytest.raises(ValueError, match="dataset too small"):
        build_train_loader(m, workers=3, **args)


def test_warmup_longer_than_the_run_is_a_warning_naming_the_key(caplog):
    cfg = PretrainConfig()
    cfg.train.steps, cfg.schedule.warmup_steps = 1000, 10000  # the schema's defaults
    with caplog.at_level(logging.WARNING, logger="pretrain.config.startup"):
        message = check_warmup(RunLength(1000, 10000), cfg)
    assert message == (
        "`schedule.warmup_steps`: 10000 is not shorter than the run (train.steps is 1000): the learning rate only "
        "ramps up to 1000/10000 of optim.lr and never decays; set schedule.warmup_steps below the run's length "
        "(unless this is a smoke run)")
    assert [r.getMessage() for r in caplog.records] == [message]
    assert check_warmup(RunLength(50, 50), cfg).startswith(
        "`schedule.warmup_steps`: 50 is not shorter than the run (train.steps is 50): the learning rate reaches "
        "optim.lr only at the last step and never decays;")
    assert check_warmup(RunLength(51, 50), cfg) is None
    assert check_warmup(RunLength(10, 0), cfg) is None


def test_warmup_from_epochs_names_the_epoch_keys():
    cfg = PretrainConfig()
    cfg.train.epochs, cfg.train.global_batch, cfg.schedule.warmup_epochs = 2.0, 100, 3.0
    length = resolve_run_length(cfg, 1000, 1000)
    assert (length.steps, length.warmup_steps) == (20, 30)
    assert check_warmup(length, cfg) == (
        "`schedule.warmup_epochs`: 3.0 gives 30 warmup steps, which is not shorter than the run (train.epochs 2.0 "
        "gives 20): the learning rate only ramps up to 20/30 of optim.lr and never decays; set "
        "schedule.warmup_epochs below the run's length (unless this is a smoke run)")
    cfg.schedule.warmup_epochs, cfg.schedule.warmup_steps = 0.0, 10000  # epochs given, warmup steps left at default
    assert check_warmup(resolve_run_length(cfg, 1000, 1000), cfg).startswith(
        "`schedule.warmup_steps`: 10000 is not shorter than the run (train.epochs 2.0 gives 20)")
