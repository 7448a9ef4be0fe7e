from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

from parity import gate
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds


def test_gate_passes_writes_csv_and_markdown(tmp_path, capsys):
    # The format on the baseline alone: nox -s tests runs the gate over every implementation.
    status = gate.main(["--device", "cpu", "--impl", "grid_sample", "--examples", "3", "--seed", "7",
                        "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "parity.csv")
    assert {"implementation", "device", "dtype", "quantity", "case", "max_abs_diff", "max_rel_diff",
            "threshold", "pass"} <= set(rows.columns)
    assert set(rows["quantity"]) == {"output", "grad_input", "grad_offset", "grad_mask"}
    assert set(rows["dtype"]) == {"float64", "float32", "float16", "bfloat16"}
    assert rows["case"].nunique() == len(REGRESSIONS) + 3
    assert rows["pass"].all() and (rows["max_abs_diff"] <= rows["threshold"]).all()
    report = (tmp_path / "parity.md").read_text()
    assert "PASS" in report and report in capsys.readouterr().out


def test_gate_sweep_is_seeded():
    assert gate.sweep(5, seed=3) == gate.sweep(5, seed=3)
    assert gate.sweep(5, seed=3) != gate.sweep(5, seed=4)


def test_gate_fails_when_a_threshold_is_exceeded(tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text("".join(f"[{d}]\noutput = 0.0\ngrad_input = 1\ngrad_offset = 1\ngrad_mask = 1\n"
                              for d in ("float64", "float32", "float16", "bfloat16")))
    assert gate.main(["--device", "cpu", "--dtype", "float32", "--examples", "1", "--thresholds", str(strict)]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--impl", "nope"], "unknown implementation(s) nope"),
    (["--impl", "reference"], "reference is the ground truth"),
    (["--device", "npu"], "device 'npu' is not usable here: no NPU"),
    (["--device", "tpu"], "unknown device type 'tpu'"),
])
def test_bad_usage_exits_2_with_a_sentence(argv, message, capsys):
    if argv == ["--device", "npu"] and "no NPU" not in str(gate.devices.unavailable_reason("npu")):
        pytest.skip("an NPU is present here")
    assert gate.main(argv + ["--examples", "0"]) == 2
    assert message in capsys.readouterr().err


def test_bad_argument_exits_2():
    result = subprocess.run([sys.executable, "-m", "parity", "--examples", "-1"], capture_output=True, text=True)
    assert result.returncode == 2 and "--examples must be >= 0" in result.stderr


def test_overrides_take_precedence(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[float32]\noutput = 1e-4\n[overrides.fancy.float32]\noutput = 3e-4\n")
    thresholds = Thresholds.load(path)
    assert thresholds.get("fancy", torch.float32, "output") == 3e-4
    assert thresholds.get("grid_sample", torch.float32, "output") == 1e-4
    with pytest.raises(KeyError, match=r"no \[float32\] grad_mask"):
        thresholds.get("grid_sample", torch.float32, "grad_mask")
