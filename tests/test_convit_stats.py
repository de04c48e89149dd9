"""ConViT monitoring scalars: gating values, nonlocality against timm and a closed form, a side-effect-free forward."""

import json

import numpy as np
import pytest
import timm
import torch

from pretrain.models import create_model
from pretrain.telemetry.convit_stats import convit_scalars, gpsa_layers
from tests.helpers_runs import failure, run

GRID = 8  # convit_tiny at 32 px with 4 px patches


def tiny_convit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convit_tiny", img_size=32, patch_size=4, num_classes=10, **kwargs).eval()


def sharpened_convit(content_scale: float, bf16_weights: bool = False) -> torch.nn.Module:
    """A tiny ConViT whose heads mix content and position differently and whose content attention is not flat."""
    model = tiny_convit()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, gpsa in gpsa_layers(model):
            gpsa.gating_param.normal_(generator=generator)
            gpsa.qk.weight.mul_(content_scale)
        if bf16_weights:  # the same weights as the model cast to bf16
            for param in model.parameters():
                param.copy_(param.to(torch.bfloat16))
    return model


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def gpsa_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each GPSA's input, captured independently of the module under test."""
    seen = []
    handles = [gpsa.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for _, gpsa in gpsa_layers(model)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def mean_pairwise_distance(side: int) -> float:
    """Closed form for uniform attention: the mean distance over all ordered pairs of cells of a side x side grid."""
    cells = np.indices((side, side)).reshape(2, -1).T.astype(np.float64)
    return float(np.linalg.norm(cells[:, None, :] - cells[None, :, :], axis=-1).mean())


def test_layers_and_gating_values_are_sigmoid_of_each_gating_param():
    model = tiny_convit()
    with torch.no_grad():
        for index, gpsa in gpsa_layers(model):
            gpsa.gating_param.copy_(torch.linspace(-2.0, 3.0, 4) + index)
    scalars = convit_scalars(model, images())
    layers = gpsa_layers(model)
    assert [index for index, _ in layers] == list(range(model.local_up_to_layer)) == list(range(10))
    assert len(scalars) == 10 * 2 * (1 + 4)
    for index, gpsa in layers:
        expected = torch.sigmoid(gpsa.gating_param)
        assert [scalars[f"convit/gating/layer{index}/head{h}"] for h in range(4)] == expected.tolist()
        assert scalars[f"convit/gating/layer{index}"] == pytest.approx(expected.mean().item(), abs=1e-7)


def test_nonlocality_matches_timm_attention_map_per_head():
    model = sharpened_convit(30.0)
    x = images()
    scalars = convit_scalars(model, x)
    for (index, gpsa), layer_input in zip(gpsa_layers(model), gpsa_inputs(model, x), strict=True):
        with torch.no_grad():
            timm_distance = gpsa.get_attention_map(layer_input)
        ours = [scalars[f"convit/nonlocality/layer{index}/head{h}"] for h in range(4)]
        assert ours == pytest.approx(timm_distance.tolist(), rel=1e-5)
        assert scalars[f"convit/nonlocality/layer{index}"] == pytest.approx(timm_distance.mean().item(), rel=1e-5)


def test_uniform_attention_gives_the_mean_pairwise_distance_of_the_grid():
    model = tiny_convit()
    _, first = gpsa_layers(model)[0]
    with torch.no_grad():
        first.qk.weight.zero_()  # equal content logits
        first.pos_proj.weight.zero_()  # equal positional logits
        first.pos_proj.bias.zero_()
    scalars = convit_scalars(model, images())
    expected = mean_pairwise_distance(GRID)
    assert expected == pytest.approx(4.13648, abs=1e-5)  # about 8 x 0.5214, the unit square's mean distance
    for h in range(4):
        assert scalars[f"convit/nonlocality/layer0/head{h}"] == pytest.approx(expected, rel=1e-6)


def test_local_init_is_more_local_than_uniform_positional_attention():
    model = tiny_convit()
    local = convit_scalars(model, images())["convit/nonlocality/layer0"]
    with torch.no_grad():
        gpsa_layers(model)[0][1].pos_proj.weight.zero_()
    spread = convit_scalars(model, images())["convit/nonlocality/layer0"]
    assert local < spread - 1.0


def test_bf16_model_is_close_to_fp32():
    x = images().to(torch.bfloat16)
    full = convit_scalars(sharpened_convit(10.0, bf16_weights=True), x.float())
    half = convit_scalars(sharpened_convit(10.0, bf16_weights=True).to(torch.bfloat16), x)
    assert half.keys() == full.keys()
    for name, value in full.items():
        if "gating" in name:
            assert half[name] == value, name
        else:  # measured: at most 0.33 % apart; the forward's activations are bf16
            assert half[name] == pytest.approx(value, rel=1e-2), name


def test_forward_leaves_modes_rng_and_hooks_as_they_were():
    model = tiny_convit(drop_rate=0.5, drop_path_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5).train()
    model.head.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    first = convit_scalars(model, images())
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(not gpsa._forward_pre_hooks for _, gpsa in gpsa_layers(model))
    assert convit_scalars(model, images()) == first  # dropout and drop-path were off


def test_failed_forward_still_removes_hooks_and_restores_mode():
    model = tiny_convit().train()
    with pytest.raises(RuntimeError):
        convit_scalars(model, torch.randn(2, 1, 32, 32))  # one channel: the patch embedding fails
    assert model.training
    assert all(not gpsa._forward_pre_hooks for _, gpsa in gpsa_layers(model))


def test_models_without_gpsa_give_nothing_and_run_no_forward():
    mixer = create_model("mixer_demo")
    calls = []
    mixer.register_forward_pre_hook(lambda m, args: calls.append(1))
    assert gpsa_layers(mixer) == []
    assert convit_scalars(mixer, images()) == {}
    assert calls == []


def test_zero3_bf16_engine_module_on_two_ranks(tmp_path):
    proc = run("tests/helpers_convit_worker.py", 2, "--out", str(tmp_path))
    assert proc.returncode == 0, failure(proc)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1  # every rank reads the same statistics and trains alike
    assert rank0["before"] == rank0["reference"]  # partitioned weights gathered: as the unwrapped bf16 model
    assert rank0["before"]["convit/gating/layer9/head0"] == pytest.approx(1 / (1 + np.exp(1.0 - 0.25 * 9)))
    assert [[rank0["after"][f"convit/gating/layer{i}/head{h}"] for h in range(4)] for i in range(10)] == rank0["gating"]
    assert rank0["hooks_kept"]
    assert len(rank0["losses"]) == 3 and all(np.isfinite(rank0["losses"]))
