"""Every shipped config against the recipe it claims (docs/design.md, "The paper's recipe, config by config"):
a config edit that drifts from the paper, big_vision or DeiT fails here, and so does a new config without a row."""

from pathlib import Path

import pytest

from finetune.config import FinetuneConfig
from pretrain.config import PretrainConfig, load_config
from pretrain.data.randaugment import parse_randaugment

CONFIGS = Path(__file__).parent.parent / "configs"
FIELDS = ("randaugment", "mixup", "cutmix", "label_smoothing", "random_erasing", "scale", "drop_path", "dropout",
          "optim", "lr", "wd", "clip", "schedule", "warmup_steps", "warmup_epochs", "end_lr", "batch", "epochs",
          "steps", "loss")
PAPER_21K = dict(optim="adamw", lr=1e-3, wd=0.1, clip=1.0, schedule="linear", warmup_steps=10000, warmup_epochs=0,
                 end_lr=0.0, batch=4096, epochs=300, steps=1000, loss="softmax_xent", cutmix=0.0, label_smoothing=0.0,
                 random_erasing=0.0, scale=(0.05, 1.0), dropout=0.0)
FINETUNE = dict(randaugment="", mixup=0.0, cutmix=0.0, label_smoothing=0.0, random_erasing=0.0, scale=(0.08, 1.0),
                drop_path=0.0, dropout=0.0, optim="sgd", lr=0.01, wd=0.0, clip=1.0, schedule="cosine",
                warmup_steps=500, warmup_epochs=0, end_lr=0.0, batch=512, epochs=0, steps=20000, loss="softmax_xent")
DEIT = dict(randaugment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, label_smoothing=0.1, random_erasing=0.25,
            scale=(0.08, 1.0), drop_path=0.1, dropout=0.0, optim="adamw", lr=1e-3, wd=0.05, clip=0.0,
            schedule="cosine", warmup_steps=10000, warmup_epochs=5, end_lr=0.01, batch=1024, epochs=300, steps=1000,
            loss="softmax_xent")
DEMO = dict(randaugment="", mixup=0.0, cutmix=0.0, label_smoothing=0.0, random_erasing=0.0, dropout=0.0,
            drop_path=0.0, clip=1.0, schedule="cosine", warmup_epochs=0, end_lr=0.0, batch=64, epochs=0,
            loss="softmax_xent")

# The paper's Appendix table (pretraining): B on ImageNet-21k m10 / mixup 0.2 / SD 0.1, L on ImageNet-21k m20 / 0.5 /
# 0.1, B on ImageNet-1k m15 / 0.5 / 0.1 (= big_vision's mlp_mixer_i1k.py); S and H are not in its ImageNet-21k rows.
TABLE = {
    "mixer_s16": dict(PAPER_21K, randaugment="rand-m10-n2-p1.0", mixup=0.2, drop_path=0.0),
    "mixer_s32": dict(PAPER_21K, randaugment="rand-m10-n2-p1.0", mixup=0.2, drop_path=0.0),
    "mixer_b16": dict(PAPER_21K, randaugment="rand-m10-n2-p1.0", mixup=0.2, drop_path=0.1),
    "mixer_b32": dict(PAPER_21K, randaugment="rand-m10-n2-p1.0", mixup=0.2, drop_path=0.1),
    "mixer_l16": dict(PAPER_21K, randaugment="rand-m20-n2-p1.0", mixup=0.5, drop_path=0.1),
    "mixer_l32": dict(PAPER_21K, randaugment="rand-m20-n2-p1.0", mixup=0.5, drop_path=0.1),
    "mixer_h14": dict(PAPER_21K, randaugment="rand-m20-n2-p1.0", mixup=0.5, drop_path=0.1),
    "mixer_b16_in1k_scratch": dict(PAPER_21K, randaugment="rand-m15-n2-p1.0", mixup=0.5, drop_path=0.1, end_lr=1e-5),
    "deit_s": DEIT,
    "convit_s": DEIT,
    "demo": dict(DEMO, scale=(0.35, 1.0), optim="adamw", lr=2e-3, wd=0.05, warmup_steps=20, steps=300),
    "finetune/mixer_s16_in1k": FINETUNE,
    "finetune/mixer_s32_in1k": FINETUNE,
    "finetune/mixer_b16_in1k": FINETUNE,
    "finetune/mixer_b32_in1k": FINETUNE,
    "finetune/mixer_l32_in1k": FINETUNE,
    "finetune/mixer_b16_in1k_448": FINETUNE,
    "finetune/mixer_l16_in1k": FINETUNE,
    "finetune/mixer_l16_in1k_448": FINETUNE,
    "finetune/mixer_h14_in1k": FINETUNE,
    "finetune/mixer_h14_in1k_448": FINETUNE,
    "finetune/demo": dict(DEMO, scale=(0.5, 1.0), optim="sgd", lr=0.03, wd=0.0, warmup_steps=10, steps=150),
}


def recipe(cfg: PretrainConfig) -> dict:
    a, o, s, t, m = cfg.augment, cfg.optim, cfg.schedule, cfg.train, cfg.model
    return dict(randaugment=a.randaugment, mixup=a.mixup, cutmix=a.cutmix, label_smoothing=a.label_smoothing,
                random_erasing=a.random_erasing, scale=a.scale, drop_path=m.drop_path_rate, dropout=m.drop_rate,
                optim=o.name, lr=o.lr, wd=o.weight_decay, clip=o.grad_clip, schedule=s.name,
                warmup_steps=s.warmup_steps, warmup_epochs=s.warmup_epochs, end_lr=s.end_lr_ratio, batch=t.global_batch,
                epochs=t.epochs, steps=t.steps, loss=t.loss)


def shipped() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in [*CONFIGS.glob("*.yaml"),
                                                                        *CONFIGS.glob("finetune/*.yaml")])


def test_every_shipped_config_has_a_row():
    assert shipped() == sorted(TABLE)
    assert all(set(row) == set(FIELDS) for row in TABLE.values())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_config_matches_its_recipe(name):
    schema = FinetuneConfig if name.startswith("finetune/") else PretrainConfig
    cfg = load_config(CONFIGS / f"{name}.yaml", schema)
    assert recipe(cfg) == TABLE[name]
    if name.startswith("finetune/mixer_"):
        assert cfg.eval.preprocess == "resize"  # the official code's evaluation: straight to the square


@pytest.mark.parametrize("name", [n for n in TABLE if n.startswith("mixer_")])
def test_mixer_randaugment_is_tf_s(name):
    """Two ops, each always applied, no magnitude noise, TF's ops (not the increasing ones), nothing clipped."""
    spec = parse_randaugment(TABLE[name]["randaugment"])
    assert (spec.num_layers, spec.prob, spec.magnitude_std, spec.increasing, spec.ceiling) == (
        2, 1.0, 0.0, False, float("inf"))
