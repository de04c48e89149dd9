"""classification_loss: softmax path equals F.cross_entropy and the soft-target formula, sigmoid path equals
big_vision's sigmoid_xent (and torch's BCE summed over classes), float32 for bf16 logits, bad kinds."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.components.losses import LOSSES, classification_loss, smoothed_one_hot

N, K = 6, 5


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, K, generator=g) * 3
    labels = torch.randint(0, K, (N,), generator=g)
    soft = torch.softmax(torch.randn(N, K, generator=g), dim=-1)
    return logits, labels, soft


def sigmoid_xent_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """big_vision's utils.sigmoid_xent, written out with log-sigmoids."""
    nll = -torch.sum(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits), dim=-1)
    return nll.mean()


def test_softmax_xent_equals_cross_entropy_and_the_soft_target_formula():
    logits, labels, soft = batch()
    for ls in (0.0, 0.1):
        got = classification_loss("softmax_xent", logits, labels, label_smoothing=ls)
        assert torch.equal(got, F.cross_entropy(logits, labels, label_smoothing=ls))
    soft_ref = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
    assert torch.equal(classification_loss("softmax_xent", logits, soft), soft_ref)
    # soft targets are used as they are: label_smoothing does not touch them
    assert torch.equal(classification_loss("softmax_xent", logits, soft, label_smoothing=0.3), soft_ref)


def test_smoothed_one_hot_is_big_vision_s():
    t = smoothed_one_hot(torch.tensor([2, 0]), 5, 0.2)
    assert t.dtype == torch.float32
    assert torch.allclose(t, torch.tensor([[0.05, 0.05, 0.8, 0.05, 0.05], [0.8, 0.05, 0.05, 0.05, 0.05]]))
    assert torch.allclose(t.sum(dim=-1), torch.ones(2))
    assert torch.equal(smoothed_one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))


def test_sigmoid_xent_equals_the_reference_for_hard_smoothed_and_soft_targets():
    logits, labels, soft = batch(1)
    for ls in (0.0, 0.1):
        t = torch.full((N, K), ls / (K - 1))
        t[torch.arange(N), labels] = 1 - ls
        got = classification_loss("sigmoid_xent", logits, labels, label_smoothing=ls)
        assert torch.allclose(got, sigmoid_xent_reference(logits, t), rtol=1e-6, atol=1e-6)
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(dim=-1).mean()
        assert torch.allclose(got, bce, rtol=1e-6, atol=1e-6)
    got = classification_loss("sigmoid_xent", logits, soft, label_smoothing=0.3)  # soft: used as is
    assert torch.allclose(got, sigmoid_xent_reference(logits, soft), rtol=1e-6, atol=1e-6)
    # summed over classes, not averaged: K times torch's default mean reduction
    mean_bce = F.binary_cross_entropy_with_logits(logits, soft)
    assert torch.allclose(got, mean_bce * K, rtol=1e-6, atol=1e-6)


def test_sigmoid_xent_is_stable_for_large_logits():
    logits = torch.tensor([[200.0, -200.0, 0.0]])  # a naive log(sigmoid) gives inf for the wrong label
    right = classification_loss("sigmoid_xent", logits, torch.tensor([0]))
    wrong = classification_loss("sigmoid_xent", logits, torch.tensor([1]))
    assert right.item() == pytest.approx(math.log(2), abs=1e-6)
    assert wrong.item() == pytest.approx(400 + math.log(2), rel=1e-6)


def test_bf16_logits_give_the_float32_loss_of_the_upcast_logits():
    logits, labels, soft = batch(2)
    low = logits.to(torch.bfloat16)
    for kind in LOSSES:
        for target, ls in ((labels, 0.0), (labels, 0.1), (soft, 0.0), (soft.to(torch.bfloat16), 0.0)):
            got = classification_loss(kind, low, target, label_smoothing=ls)
            assert got.dtype == torch.float32
            upcast = target.float() if target.ndim == 2 else target
            assert torch.equal(got, classification_loss(kind, low.float(), upcast, label_smoothing=ls)), (kind, ls)
        low.requires_grad_(True)
        classification_loss(kind, low, labels).backward()
        assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
        low = low.detach()


def test_unknown_kind_names_the_allowed_ones():
    logits, labels, _ = batch()
    with pytest.raises(ValueError, match=r"^unknown loss 'xent', expected one of softmax_xent, sigmoid_xent$"):
        classification_loss("xent", logits, labels)
