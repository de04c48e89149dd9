"""LR schedule: linear warmup to the peak, then linear or cosine decay to end_lr_ratio; resumable state."""

import math

import pytest
import torch

from pretrain.components.schedule import build_scheduler, lr_factor
from pretrain.config import ScheduleConfig


def test_warmup_then_linear_decay():
    cfg = ScheduleConfig(name="linear", warmup_steps=4, end_lr_ratio=0.0)
    assert [lr_factor(s, 12, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 12, cfg) == 1.0
    assert lr_factor(8, 12, cfg) == pytest.approx(0.5)
    assert lr_factor(12, 12, cfg) == 0.0


def test_cosine_reaches_end_ratio():
    cfg = ScheduleConfig(name="cosine", warmup_steps=0, end_lr_ratio=0.1)
    assert lr_factor(0, 10, cfg) == 1.0
    assert lr_factor(5, 10, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, 10, cfg) == pytest.approx(0.1)


def test_scheduler_state_resumes_at_the_same_lr():
    cfg = ScheduleConfig(name="linear", warmup_steps=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 10, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 10, cfg)
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(lr_factor(5, 10, cfg))
