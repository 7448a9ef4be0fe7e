import pytest
import torch

from bench import instruments
from impls import devices


def test_cpu_is_always_usable():
    assert devices.unavailable_reason("cpu") is None
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.best_device_type() in devices.DEVICE_TYPES


def test_absent_npu_is_explained_without_breaking_torch():
    reason = devices.unavailable_reason("npu")
    if reason is None:
        pytest.skip("an NPU is present here")
    assert reason.startswith("no NPU: ")
    with pytest.raises(ValueError, match="device 'npu' is not usable here: no NPU"):
        devices.resolve("npu")
    assert torch.zeros(1).sum().item() == 0


def test_absent_cuda_is_explained():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    assert devices.unavailable_reason("cuda") == "no CUDA device: torch.cuda.is_available() is False"


def test_auto_resolves_to_the_best_present():
    assert devices.resolve("auto").type == devices.best_device_type()


def test_torch_npu_is_not_imported_by_the_harness():
    """With torch's own autoloading off (which on an Ascend host imports torch_npu during
    `import torch`), nothing in the harness imports it until the npu device is asked about."""
    import os
    import subprocess
    import sys

    code = "import impls, parity.gate, bench.run, sys; print('torch_npu' in sys.modules)"
    environment = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    assert result.stdout.strip() == "False"


def test_every_dtype_computes_on_cpu():
    assert all(devices.dtype_unavailable_reason("cpu", dtype) is None
               for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16))


def test_cpu_peak_memory_sees_each_region_even_when_memory_is_reused():
    device = torch.device("cpu")
    for _ in range(2):  # the second region reuses what the first freed
        with instruments.PeakMemory(device) as peak:
            block = torch.ones(25_000_000)  # 100 MB
            del block
        assert 95e6 < peak.bytes < 140e6
    with instruments.PeakMemory(device) as small:
        torch.ones(1000)
    assert small.bytes < 5e6


def test_settled_cpu_heap_sets_both_of_glibcs_warmed_up_thresholds(monkeypatch):
    calls = []
    heap = instruments._glibc_heap()
    monkeypatch.setattr(heap, "_mallopt", lambda option, value: calls.append((option, value)))
    instruments.settle_heap(torch.device("cpu"))
    # Setting the mmap threshold alone freezes the trim threshold at 128 KB;
    # glibc's own warm-up sets it to twice the mmap threshold.
    assert dict(calls) == {heap.M_TRIM_THRESHOLD: 64 * 2**20, heap.M_MMAP_THRESHOLD: 32 * 2**20}
    calls.clear()
    instruments.settle_heap(torch.device("meta"))
    assert calls == []


def test_cpu_timer_reads_seconds():
    import time

    timer = instruments.synchronised_timer(torch.device("cpu"))
    assert 15 < instruments.elapsed_ms(timer, lambda: time.sleep(0.02)) < 500
