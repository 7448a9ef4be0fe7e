"""bench-npu's logic where no NPU is present: one sentence and exit 1; elsewhere what it found."""

from __future__ import annotations

import pytest
import torch

from bench import instruments, preflight
from impls import devices


def test_an_absent_npu_stops_with_one_sentence(capsys):
    if devices.unavailable_reason("npu") is None:
        pytest.skip("an NPU is present here")
    assert preflight.main(["--device", "npu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench-npu: no NPU: ")


def test_a_present_device_reports_versions_warnings_and_implementations(capsys, monkeypatch):
    monkeypatch.setenv("ASCEND_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    assert preflight.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "versions: torch " in out
    # Each device type's own variable only: neither serialises anything on a CPU.
    assert "warning:" not in out
    assert instruments.timing_warnings(torch.device("cuda")) == [
        "CUDA_LAUNCH_BLOCKING=1 serialises cuda operator launches and distorts timings"]
    assert "  grid_sample: runs" in out
    assert "  npu_deform_conv: npu_deform_conv does not run on cpu" in out
    # Each operator's own list.
    dcnv3, msda = out.split("dcnv3 implementations:\n")[1].split("msda implementations:\n")
    assert "  optimized: runs" in dcnv3 and "  compiled:" in dcnv3 and "  compiled:" not in msda
    assert "  mmcv: mmcv does not run on cpu (runs on cuda)" in msda and "  cpu_kernel: runs" in msda


@pytest.mark.parametrize("device, fix", [("npu", "install torch_npu >= 2.4 with its matching torch"),
                                         ("cpu", "install torch >= 2.4")])
def test_a_torch_older_than_the_floor_stops_with_one_sentence_before_the_harness_loads(capsys, monkeypatch, device, fix):
    monkeypatch.setattr(preflight.torch, "__version__", "2.3.1+cpu")
    assert preflight.main(["--device", device]) == 1
    err = capsys.readouterr().err
    assert err == f"bench-{device}: torch 2.3.1+cpu is older than the 2.4 this harness needs; {fix}\n"


def test_the_floor_accepts_the_versions_ascend_hosts_run():
    assert all(preflight.torch_too_old(version, "npu") is None for version in ("2.4.0", "2.7.1", "2.10.0+cpu", "3.0.0"))
