"""Weight decay applies to weight matrices and conv kernels only, never to biases, LayerNorm parameters or what the
model exempts (timm's no_weight_decay: position embedding, class token)."""

import torch
from torch import nn

from pretrain.components.optim import build_optimizer, param_groups
from pretrain.config import OptimConfig


def test_no_decay_on_bias_and_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_no_decay_on_what_a_timm_model_exempts():
    from pretrain.models import create_model

    model = create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    decay, no_decay = param_groups(model, 0.05)
    exempt = {id(model.pos_embed), id(model.cls_token)}
    assert exempt <= {id(p) for p in no_decay["params"]} and not exempt & {id(p) for p in decay["params"]}
    assert id(model.patch_embed.proj.weight) in {id(p) for p in decay["params"]}


def test_optimizer_kinds():
    model = nn.Linear(2, 2)
    adam = build_optimizer(model, OptimConfig(name="adamw", lr=0.5, betas=(0.8, 0.9)), torch.device("cpu"))
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["betas"] == (0.8, 0.9)
    sgd = build_optimizer(model, OptimConfig(name="sgd", momentum=0.9, weight_decay=0.0), torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
