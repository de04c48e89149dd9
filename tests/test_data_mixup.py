"""MixupPerStep: deterministic per (step, virtual rank), no global RNG leak, soft targets."""

import numpy as np
import pytest
import torch

from pretrain.data import MixupPerStep


def mix(step, virtual_rank=0, **kw):
    args = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5, seed=3)
    args.update(kw)
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8) / 100
    labels = torch.tensor([0, 1, 2, 3])
    return MixupPerStep(**args)(images, labels, step, virtual_rank)


def test_same_step_same_mix_and_the_global_rng_is_untouched():
    np.random.seed(1)
    expected = np.random.rand()
    np.random.seed(1)
    a, b = mix(7), mix(7)
    assert np.random.rand() == expected
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [mix(s) for s in range(8)] + [mix(7, virtual_rank=1)]
    assert len({o[1].numpy().tobytes() for o in others}) > 4


def test_mixup_mixes_images_and_smoothed_targets_with_one_lambda():
    images, targets = mix(2, cutmix_alpha=0.0)
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8) / 100
    on, off = 1 - 0.1 + 0.1 / 5, 0.1 / 5
    lam = (targets[0, 0].item() - off) / (on - off)  # sample 0 (class 0) mixed with sample 3 (class 3)
    assert 0 < lam < 1
    assert torch.allclose(images, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    assert torch.isclose(targets[0, 3], torch.tensor(off * lam + on * (1 - lam)), atol=1e-6)
    assert torch.allclose(targets[0, 1:3], torch.tensor([off, off]))
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_errors():
    with pytest.raises(ValueError, match="^mixup needs an even micro-batch, got 3$"):
        MixupPerStep(mixup_alpha=0.8, cutmix_alpha=0, label_smoothing=0, num_classes=5, seed=0)(
            torch.zeros(3, 3, 4, 4), torch.zeros(3, dtype=torch.int64), 0
        )
    with pytest.raises(ValueError, match="^MixupPerStep needs mixup_alpha > 0 or cutmix_alpha > 0$"):
        MixupPerStep(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0, num_classes=5, seed=0)
