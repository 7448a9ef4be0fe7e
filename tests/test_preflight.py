"""bench-npu's logic where no NPU is present: one sentence and exit 1; elsewhere what it found."""

from __future__ import annotations

import pytest

from bench import preflight
from impls import devices


def test_an_absent_npu_stops_with_one_sentence(capsys):
    if devices.unavailable_reason("npu") is None:
        pytest.skip("an NPU is present here")
    assert preflight.main(["--device", "npu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench-npu: no NPU: ")


def test_a_present_device_reports_versions_warnings_and_implementations(capsys, monkeypatch):
    monkeypatch.setenv("ASCEND_LAUNCH_BLOCKING", "1")
    assert preflight.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "versions: torch " in out
    assert "warning: ASCEND_LAUNCH_BLOCKING=1 serialises operator launches" in out
    assert "  grid_sample: runs" in out
    assert "  npu_deform_conv: npu_deform_conv does not run on cpu" in out
