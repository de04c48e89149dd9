"""The fp32 masters, in real one-process bf16 DeepSpeed engines (ZeRO-0: DeepSpeed keeps them in its optimizer's
`fp32_groups`; ZeRO-1: BF16_Optimizer): the EMA averages them, not the bf16 working copy, and the export writes
them, saying so in its metadata. A bf16 parameter without a master we can find is exported as what it is."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pretrain.components.export import export_weights
from pretrain.models import create_model
from tests.helpers_runs import ROOT, env


@pytest.mark.parametrize("stage", [0, 1])
def test_the_ema_and_the_export_are_of_the_fp32_masters(tmp_path, stage):
    proc = subprocess.run([sys.executable, "tests/helpers_masters_worker.py", str(stage), str(tmp_path)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = torch.load(tmp_path / "result.pt")
    masters, working = r["masters"], r["working"]
    assert all(torch.equal(masters[k].bfloat16(), working[k]) for k in masters)  # the working copy is rounded
    assert all(not torch.equal(masters[k], working[k].float()) for k in masters)  # ... and not the master
    assert all(torch.equal(r["ema"][k], r["of_masters"][k]) for k in masters)
    assert all(not torch.equal(r["ema"][k], r["of_working"][k]) for k in masters)
    exported = load_file(tmp_path / "final.safetensors")
    assert all(torch.equal(exported[k], masters[k]) for k in masters)
    with safe_open(tmp_path / "final.safetensors", "pt") as f:
        assert f.metadata()["weights"] == "fp32 masters"


def test_a_bf16_parameter_without_a_master_exports_the_working_copy_and_says_so(tmp_path, caplog):
    model = create_model("mixer_demo", num_classes=10, img_size=32).bfloat16()
    export_weights(SimpleNamespace(module=model), tmp_path / "w.safetensors", rank=0)
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert f.metadata()["weights"] == "bfloat16 working copy"
    exported = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(exported[k], p.float()) for k, p in model.named_parameters())
    assert "no fp32 master copy of a torch.bfloat16 parameter" in caplog.text
