"""What `pretrain/components/ds_internals.py` takes from DeepSpeed's private parts still holds for the installed
DeepSpeed: file names, state-dict keys, attributes and signatures, on tiny real engines (ZeRO 0/1/3, fp32 and bf16). A
DeepSpeed upgrade that changes one fails here by name. And the dynamic fp16 loss scale survives a resume into and out of
ZeRO-0 (on a GPU; DeepSpeed has no fp16 on a CPU)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import deepspeed
import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaleConfig
from packaging.specifiers import SpecifierSet

from pretrain.components import ds_internals as dsi
from tests.helpers_runs import ROOT, env

WORKER = "tests/helpers_ds_internals_worker.py"


def facts(mode: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, WORKER, mode, str(out)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=600)
    found = re.search(r"^FACTS (.*)$", proc.stdout, re.MULTILINE)
    assert proc.returncode == 0 and found, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(found.group(1))


def test_the_installed_deepspeed_is_in_the_pinned_range():
    [pin] = re.findall(r'"(deepspeed[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert deepspeed.__version__ in SpecifierSet(pin.removeprefix("deepspeed")), (
        f"DeepSpeed {deepspeed.__version__} is outside {pin}: check pretrain/components/ds_internals.py against it "
        "(tests/test_ds_internals.py), then move the pin")


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict:
    """One worker run over five tiny engines (they take most of its time)."""
    return facts("layout", tmp_path_factory.mktemp("layout"))


def test_every_private_deepspeed_access_still_holds(layout):
    found = layout["internals"]
    assert len(found) == 48, sorted(found)
    broken = [name for name, ok in found.items() if ok is not True]
    assert not broken, (f"DeepSpeed {deepspeed.__version__} changed what pretrain/components/ds_internals.py relies "
                        f"on: {broken}")


def test_the_dynamic_loss_scale_goes_through_the_universal_copy_between_zero0_and_zero1(layout):
    carried = layout["carry"]
    zero0 = {"cur_scale": 512.0, "cur_iter": 7, "last_overflow_iter": 5, "cur_hysteresis": None}
    zero1 = {"cur_scale": 32.0, "cur_iter": 9, "last_overflow_iter": 8, "cur_hysteresis": 1}
    assert carried["zero0 copy"] == zero0 and carried["zero1 copy"] == zero1
    assert carried["zero0 -> zero1 engine"] == {**zero0, "cur_hysteresis": 2}  # the engine's own hysteresis stays
    assert carried["zero1 -> zero0 engine"] == {**zero1, "cur_hysteresis": None}  # ZeRO-0's scaler has none


def scaler(scale: float, it: int, overflow: int, hysteresis: int) -> DynamicLossScaler:
    s = DynamicLossScaler(init_scale=scale, scale_window=1000, min_scale=1, delayed_shift=2,
                          consecutive_hysteresis=False)
    s.cur_iter, s.last_overflow_iter, s.cur_hysteresis = it, overflow, hysteresis
    return s


class ZeroOptimizer:  # what the ZeRO 1-3 optimizers expose: `loss_scaler`
    def __init__(self, loss_scaler) -> None:
        self.loss_scaler = loss_scaler


class FusedFP16Optimizer:  # what ZeRO-0's FP16_Optimizer exposes: `loss_scale_config`
    def __init__(self) -> None:
        self.loss_scale_config = LossScaleConfig(torch.float16, True, 1.0, None)


def test_the_loss_scale_moves_between_the_zero_and_the_zero0_fp16_optimizers():
    assert all(hasattr(scaler(1.0, 0, -1, 2), k) for k in dsi.LOSS_SCALE_KEYS)
    assert all(hasattr(FusedFP16Optimizer().loss_scale_config, k) for k in dsi.LOSS_SCALE_KEYS[:3])
    zero = ZeroOptimizer(scaler(2.0 ** 9, 40, 37, 1))
    zero0 = FusedFP16Optimizer()
    assert zero0.loss_scale_config.cur_scale == 2.0 ** 32  # the fresh default, which a resume used to keep
    assert dsi.set_loss_scale(zero0, dsi.loss_scale_of(zero))
    assert dsi.loss_scale_of(zero0) == {"cur_scale": 2.0 ** 9, "cur_iter": 40, "last_overflow_iter": 37,
                                        "cur_hysteresis": None}  # ZeRO-0's scaler has no hysteresis
    back = ZeroOptimizer(scaler(2.0 ** 16, 0, -1, 2))
    assert dsi.set_loss_scale(back, dsi.loss_scale_of(zero0))
    assert (back.loss_scaler.cur_scale, back.loss_scaler.cur_iter, back.loss_scaler.last_overflow_iter,
            back.loss_scaler.cur_hysteresis) == (2.0 ** 9, 40, 37, 2)
    # the saved forms: ZeRO 1-3's pickled scaler, FP16_Optimizer.state_dict's keys
    assert dsi.saved_loss_scale({"loss_scaler": zero.loss_scaler, "dynamic_loss_scale": True}) == dsi.loss_scale_of(
        zero)
    fp16_state = {"dynamic_loss_scale": True, "cur_scale": 64.0, "cur_iter": 5, "last_overflow_iter": 4,
                  "scale_factor": 2.0, "scale_window": 1000}
    assert dsi.saved_loss_scale(fp16_state) == {"cur_scale": 64.0, "cur_iter": 5, "last_overflow_iter": 4,
                                                "cur_hysteresis": None}
    static = ZeroOptimizer(scaler(1.0, 0, -1, 2))
    static.loss_scaler.dynamic = False  # bf16/fp32: nothing to carry, nothing to set
    assert dsi.loss_scale_of(static) is None and not dsi.set_loss_scale(static, dsi.loss_scale_of(zero))
    assert dsi.saved_loss_scale({"loss_scaler": static.loss_scaler, "dynamic_loss_scale": False}) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed has no fp16 on a CPU")
def test_an_fp16_resume_into_and_out_of_zero0_keeps_the_dynamic_loss_scale(tmp_path):
    for move, scale in facts("loss_scale", tmp_path).items():
        assert scale["saved"]["cur_scale"] < scale["default"]["cur_scale"], (move, scale)  # the overflows halved it
        for key in ("cur_scale", "cur_iter", "last_overflow_iter"):
            assert scale["restored"][key] == scale["saved"][key], (move, key, scale)
