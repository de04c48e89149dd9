"""The fixed input permutation (paper, section 3.4): a true permutation, seeded, whole patches in 'patches' mode;
a Mixer is invariant to it up to a permutation of its weights, a ResNet is not; config, and one preprocessing
path for training, evaluation and few-shot."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from einops import rearrange
from torch import nn

from finetune.config import EvalConfig, FewshotConfig, FinetuneConfig
from finetune.stage import default_evals
from pretrain.cluster.distributed import detect_env
from pretrain.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    TrainConfig,
    load_config,
)
from pretrain.data import FixedPermutation, device_preprocess, normalize_on_device
from pretrain.evaluators.build import build_evaluators
from pretrain.models import create_model
from pretrain.models.permute_weights import permute_mixer_weights
from pretrain.run import Run
from tests.helpers_models import perturb_
from tests.helpers_shards import write_dataset

STUDY = Path(__file__).parent.parent / "configs/studies/digits_mixer.yaml"
NO_PATCH_MODEL = "resnet18"  # a model name without a patch size of its own


def positions(perm: FixedPermutation, n: int = 2, c: int = 3) -> torch.Tensor:
    """Images whose every channel holds each pixel's flat position: the output shows where each pixel came from."""
    h, w = perm.img_size
    return torch.arange(h * w).view(1, 1, h, w).expand(n, c, h, w).contiguous()


@pytest.mark.parametrize("mode", ["patches", "pixels"])
@pytest.mark.parametrize("size", [32, (32, 48)])
def test_is_a_permutation_the_same_for_every_channel_and_invertible(mode, size):
    perm = FixedPermutation(mode, 0, size, 4)
    h, w = perm.img_size
    out = perm(positions(perm))
    assert torch.equal(out, perm.index.view(1, 1, h, w).expand_as(out))  # every image and channel: one map
    assert torch.equal(perm.index.sort().values, torch.arange(h * w))
    x = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    y = perm(x)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert not torch.equal(y, x)
    assert torch.equal(perm.inverse(y), x) and torch.equal(perm(perm.inverse(x)), x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_any_dtype_and_a_single_image(dtype):
    perm = FixedPermutation("patches", 5, 16, 4)
    x = torch.randn(3, 3, 16, 16).mul(50).to(dtype)
    expected = x.flatten(2)[:, :, perm.index].view_as(x)
    assert torch.equal(perm(x), expected)
    assert torch.equal(perm(x[0]), expected[0])


def test_seeded_by_its_own_generator_not_the_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = FixedPermutation("patches", 7, 32, 4), FixedPermutation("patches", 7, 32, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.index, b.index) and torch.equal(a.token_order, b.token_order)
    assert torch.equal(a.pixel_order, b.pixel_order)
    assert not torch.equal(a.index, FixedPermutation("patches", 8, 32, 4).index)
    assert not torch.equal(FixedPermutation("pixels", 7, 32).index, FixedPermutation("pixels", 8, 32).index)


def test_patches_mode_moves_whole_patches_and_shuffles_inside_each_the_same_way():
    perm = FixedPermutation("patches", 0, (32, 48), 4)
    assert perm.token_order.shape == (8 * 12,) and perm.pixel_order.shape == (16,)
    src = rearrange(positions(perm, 1, 1)[0, 0], "(gh p) (gw q) -> (gh gw) (p q)", p=4, q=4)
    out = rearrange(perm(positions(perm, 1, 1))[0, 0], "(gh p) (gw q) -> (gh gw) (p q)", p=4, q=4)
    # output patch t is input patch token_order[t], its pixels reordered by pixel_order
    assert torch.equal(out, src[perm.token_order][:, perm.pixel_order])
    assert not torch.equal(perm.token_order, torch.arange(96)) and not torch.equal(perm.pixel_order, torch.arange(16))


def test_pixels_mode_differs_and_scatters_patches():
    pixels, patches = FixedPermutation("pixels", 0, 32), FixedPermutation("patches", 0, 32, 4)
    assert pixels.token_order is None and pixels.pixel_order.shape == (1024,)
    assert not torch.equal(pixels.index, patches.index)
    out = rearrange(pixels(positions(pixels, 1, 1))[0, 0], "(gh p) (gw q) -> (gh gw) (p q)", p=4, q=4)
    source_patch = (out // 32 // 4) * 8 + (out % 32) // 4
    assert (source_patch != source_patch[:, :1]).any(dim=1).all()  # every output patch mixes input patches


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^unknown permutation mode 'rows'; expected 'patches' or 'pixels'$"):
        FixedPermutation("rows", 0, 32, 4)
    with pytest.raises(ValueError, match=r"^image size 30x30 is not divisible by patch size 4$"):
        FixedPermutation("patches", 0, 30, 4)
    with pytest.raises(ValueError, match=r"^image size 32x32 is not divisible by patch size 0$"):
        FixedPermutation("patches", 0, 32)
    with pytest.raises(ValueError, match=r"^expected \(\.\.\., C, 32, 32\) images, got shape \(2, 3, 32, 16\)$"):
        FixedPermutation("pixels", 0, 32)(torch.zeros(2, 3, 32, 16))


def mixer_pair(size, seed=0):
    """A Mixer with every weight off its init, and the shuffled-input permutation of its patch grid."""
    torch.manual_seed(seed)
    model = perturb_(create_model("mixer_demo", img_size=size), seed).eval()
    return model, FixedPermutation("patches", seed, size, model.patch_size)


@pytest.mark.parametrize("size", [32, (32, 48)])
def test_mixer_on_shuffled_images_equals_the_weight_permuted_mixer_on_the_originals(size):
    """Mixer(theta)(P(x)) == Mixer(permute_mixer_weights(theta))(x): the shuffle costs a Mixer nothing."""
    model, perm = mixer_pair(size)
    permuted = create_model("mixer_demo", img_size=size).eval()
    permuted.load_state_dict(permute_mixer_weights(model.state_dict(), perm.token_order, perm.pixel_order))
    x = torch.randn(4, 3, *perm.img_size)
    with torch.no_grad():
        on_shuffled, on_original, weight_permuted = model(perm(x)), model(x), permuted(x)
    torch.testing.assert_close(weight_permuted, on_shuffled, rtol=0, atol=1e-5)
    assert (on_shuffled - on_original).abs().max() > 0.1  # not trivially equal: the shuffle does change the input
    assert on_shuffled.abs().max() > 0.5


def test_weight_permutation_checks_sizes_and_identity_changes_nothing():
    model, perm = mixer_pair(32)
    state = model.state_dict()
    same = permute_mixer_weights(state, torch.arange(64), torch.arange(16))
    assert same.keys() == state.keys() and all(torch.equal(same[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"^permutations of 96 tokens and 16 pixels per patch do not fit a Mixer "
                                         r"with 64 tokens and 4x4 patches$"):
        permute_mixer_weights(state, torch.arange(96), torch.arange(16))


def test_resnet_function_changes_under_the_shuffle_while_the_mixer_has_an_exact_equivalent():
    """Shows only that the ResNet's output moves a lot under P and no trivial equality holds (the paper's point is
    that its accuracy drops when trained on shuffled images); the Mixer's weight-permuted twin matches exactly."""
    model, perm = mixer_pair(32)
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        r_original, r_shuffled = resnet(x), resnet(perm(x))
        permuted = create_model("mixer_demo", img_size=32).eval()
        permuted.load_state_dict(permute_mixer_weights(model.state_dict(), perm.token_order, perm.pixel_order))
        mixer_gap = (model(perm(x)) - permuted(x)).abs().max()
    relative = (r_shuffled - r_original).norm() / r_original.norm()
    assert relative > 0.2
    assert mixer_gap < 1e-5


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(STUDY, PretrainConfig, overrides)
    return str(info.value)


def test_config_keys_are_validated_with_the_key_named():
    assert config_error(["augment.permute=rows"]) == (
        "`augment.permute`: 'rows' is not allowed; expected '' (off), 'patches' or 'pixels'")
    assert config_error(["augment.permute=patches", "model.img_size=30"]) == (
        "`augment.permute_patch_size`: 0 is not allowed; expected a divisor of model.img_size (30) "
        "(0 means the model's patch size, 4)")
    assert config_error(["augment.permute=patches", "augment.permute_patch_size=5"]) == (
        "`augment.permute_patch_size`: 5 is not allowed; expected a divisor of model.img_size (32)")
    assert config_error(["augment.permute=patches", f"model.name={NO_PATCH_MODEL}"]) == (
        "`augment.permute_patch_size`: 0 is not allowed; expected a positive patch size: model 'resnet18' has no "
        "patch size of its own")
    assert config_error(["augment.permute_patch_size=-1"]) == (
        "`augment.permute_patch_size`: -1 is not allowed; expected an integer >= 0 (0: the model's patch size)")
    assert config_error(["augment.permute_seed=-1"]) == (
        "`augment.permute_seed`: -1 is not allowed; expected an integer >= 0")


def test_patch_size_comes_from_the_model_unless_given():
    cfg = load_config(STUDY, PretrainConfig, ["augment.permute=patches"])
    assert (cfg.augment.permute, cfg.augment.permute_seed, cfg.permute_patch_size()) == ("patches", 0, 4)
    cfg = load_config(STUDY, PretrainConfig, ["augment.permute=patches", "augment.permute_patch_size=8",
                                              f"model.name={NO_PATCH_MODEL}"])
    assert cfg.permute_patch_size() == 8
    assert load_config(STUDY, PretrainConfig, ["augment.permute=pixels", f"model.name={NO_PATCH_MODEL}"])
    assert load_config(STUDY, PretrainConfig).augment.permute == ""  # the study's natural-image arm


@pytest.mark.parametrize("mode", ["", "patches", "pixels"])
def test_preprocess_is_normalisation_then_the_permutation(mode):
    cfg = load_config(STUDY, PretrainConfig, [f"augment.permute={mode}", "augment.permute_seed=3",
                                              "augment.mean=[0.1, 0.2, 0.3]", "augment.std=[0.4, 0.5, 0.6]"])
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        expected = normalize_on_device(x, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), dtype)
        if mode:
            expected = FixedPermutation(mode, 3, 32, 4)(expected)
        got = device_preprocess(cfg, dtype)(x)
        assert got.dtype == dtype and torch.equal(got, expected)


class Recorder(nn.Module):
    """Records the image batches it is given; logits / pre-logit features are cheap functions of them."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.head = nn.Identity()
        self.seen: list[torch.Tensor] = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1)[:, :10] * self.scale

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.mark.timeout(60)
def test_training_evaluation_and_fewshot_see_the_same_permuted_images(tmp_path):
    manifest_path = write_dataset(str(tmp_path), [20], size=(16, 16))

    env = detect_env({}, cuda=False)
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def seen(permute: str) -> dict[str, torch.Tensor]:
        cfg = FinetuneConfig(model=ModelConfig(name="mixer_demo", img_size=16, num_classes=10),
                             data=DataConfig(train=manifest_path, val=manifest_path, workers=0),
                             augment=AugmentConfig(permute=permute, permute_seed=2),
                             eval=EvalConfig(batch_size=8, crop_pct=1.0),
                             fewshot=FewshotConfig(enabled=True, shots=[1], seeds=[0]),
                             train=TrainConfig(micro_batch=4, global_batch=4))
        out = {}
        preprocess = device_preprocess(cfg, torch.float32)
        evaluators = build_evaluators(default_evals(cfg), cfg, env, exact_classes=False)
        for name, where in (("val", "evaluate"), ("fewshot", "fewshot")):
            model = Recorder()
            evaluators[name](model, preprocess)
            out[where] = torch.cat(model.seen)
        mixed = []
        run = SimpleNamespace(cfg=cfg, accum=1, preprocess=preprocess, env=env, state=SimpleNamespace(step=0),
                              has_gpsa=False, mixup=lambda x, y, step, rank: (mixed.append(x) or x, y))
        Run.micro_batches(run, {"image": batch, "label": torch.zeros(4, dtype=torch.long)})
        out["train"] = mixed[0]
        return out

    natural, shuffled = seen(""), seen("patches")
    perm = FixedPermutation("patches", 2, 16, 4)
    for where in ("evaluate", "fewshot", "train"):
        assert not torch.equal(shuffled[where], natural[where])
        assert torch.equal(shuffled[where], perm(natural[where])), where
