"""Zero-initialised head replacement: exact zero logits, unchanged pre-logit features."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from finetune.head import replace_head, zero_head
from tests.helpers_finetune import make_mixer


def test_replaced_head_gives_zero_logits_and_keeps_pre_logits():
    model = make_mixer(num_classes=10)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert model(x).abs().sum() > 0
        replace_head(model, 7)
        assert model.head.weight.shape == (7, 32)
        assert torch.equal(model(x), torch.zeros(3, 7))
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pre_logits)


def test_replace_head_keeps_dtype_and_works_for_other_timm_models():
    model = timm.create_model("resnet10t", num_classes=4).to(torch.bfloat16).eval()
    replace_head(model, 3)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 3 and head.weight.dtype == torch.bfloat16
    logits = model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert torch.equal(logits, torch.zeros(2, 3, dtype=torch.bfloat16))


def test_zero_classes_gives_identity_head():
    model = make_mixer()
    replace_head(model, 0)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_zero_head_in_place_keeps_the_module():
    model = make_mixer()
    head = model.head
    zero_head(model)
    assert model.head is head and not head.weight.any() and not head.bias.any()


def test_model_without_reset_classifier_is_refused():
    message = r"^Linear has no reset_classifier\(num_classes\); cannot replace its head$"
    with pytest.raises(TypeError, match=message):
        replace_head(nn.Linear(2, 2), 3)
