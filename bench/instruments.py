"""The benchmark's instruments: the device-synchronising clock pytest-benchmark times with, the cache
flush between repetitions, glibc's heap settled before timing, peak memory, and the versions a record
names. Which devices exist and how to synchronise them is impls/devices.py's."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import time
from typing import Callable

import torch

from impls import devices


def synchronised_timer(device: torch.device | str) -> Callable[[], float]:
    """A clock for pytest-benchmark's `timer`: seconds, read after the device finished what was queued.

    Read before and after a repetition, it times the repetition's device work (and the launch gaps a
    user also waits for), and the cache flush queued before it is done by the first reading. Events would
    time the device alone, but pytest-benchmark keeps one set of statistics from one timer, and its
    timer is a clock to read, not a pair of events (torch.utils.benchmark synchronises the same way).
    The device's module is looked up when the clock is read: pytest collects before torch_npu loads.
    """
    if devices.type_of(device) == "cpu":
        return time.perf_counter

    def synchronised() -> float:
        devices.synchronize(device)
        return time.perf_counter()

    return synchronised


def elapsed_ms(timer: Callable[[], float], run: Callable[[], object]) -> float:
    started = timer()
    run()
    return (timer() - started) * 1e3


# Larger than any current last-level cache (H200: 60 MB L2; 910B: 192 MB L2).
FLUSH_BYTES = 512 * 2**20


def cache_flusher(device: torch.device) -> Callable[[], None]:
    """A callable that evicts the device cache between timed repetitions (a no-op on cpu)."""
    if device.type == "cpu":
        return lambda: None
    scratch = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)

    def flush() -> None:
        scratch.zero_()

    return flush


def _cpu_resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) * 1024


class _GlibcMmapThreshold:
    """Makes glibc return large freed blocks to the OS while a peak is measured.

    By default glibc raises its mmap threshold as blocks are freed (up to
    32 MB), and its trim threshold with it (to twice that), and then serves
    large tensors from a heap it never shrinks, so the peak resident set barely
    moves once warm. With every block of 64 KB or more mmapped, each tensor's
    pages come and go with it and VmHWM is the region's true peak. `steady`
    puts back glibc's state after warm-up: both thresholds, since setting one by
    hand freezes the other at its default (a trim threshold of 128 KB, which
    made every large temporary fault its pages in again on each call: the
    grid_sample fallback ran up to 2x slower, by the heap's history).
    """

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    MEASURING, STEADY = 64 * 1024, 32 * 2**20
    DEFAULT_TRIM = 128 * 1024

    def __init__(self):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            self._mallopt, self._malloc_trim = libc.mallopt, libc.malloc_trim
        except (OSError, AttributeError):
            self._mallopt = None  # not glibc: the resident-set growth is a lower bound

    def measuring(self) -> None:
        """Low threshold, and free heap pages handed back so that reusing them counts again."""
        if self._mallopt is not None:
            self._mallopt(self.M_MMAP_THRESHOLD, self.MEASURING)
            self._mallopt(self.M_TRIM_THRESHOLD, self.DEFAULT_TRIM)
            self._malloc_trim(0)

    def steady(self) -> None:
        if self._mallopt is not None:
            self._mallopt(self.M_MMAP_THRESHOLD, self.STEADY)
            self._mallopt(self.M_TRIM_THRESHOLD, 2 * self.STEADY)


@functools.lru_cache(maxsize=None)
def _glibc_heap() -> _GlibcMmapThreshold:
    return _GlibcMmapThreshold()


def settle_heap(device: torch.device) -> None:
    """Before timing on cpu: glibc's warmed-up heap, the state every case is then timed in."""
    if device.type == "cpu":
        _glibc_heap().steady()


class PeakMemory:
    """Peak memory of a region: the allocator's peak on cuda and npu; on cpu the growth
    of the process's peak resident set (Linux: /proc/self/clear_refs resets VmHWM)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._module = devices.accelerator(device)

    def __enter__(self) -> "PeakMemory":
        devices.synchronize(self.device)
        if self._module is not None:
            self._module.reset_peak_memory_stats(self.device)
            self._baseline = self._module.memory_allocated(self.device)
        else:
            _glibc_heap().measuring()
            try:
                with open("/proc/self/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
            except OSError:
                pass  # VmHWM then stays the lifetime peak: growth shows only past it
            self._baseline = _cpu_resident_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        devices.synchronize(self.device)
        if self._module is not None:
            peak = self._module.max_memory_allocated(self.device)
        else:
            peak = _cpu_resident_bytes("VmHWM")
            _glibc_heap().steady()
        self.bytes = max(0, peak - self._baseline)


def versions() -> dict[str, str]:
    """torch, torch_npu and CANN where torch_npu imports, and the deployment runtimes where installed."""
    found = {"torch": torch.__version__}
    for runtime in ("onnxruntime", "openvino"):
        try:
            found[runtime] = importlib.metadata.version(runtime)
        except importlib.metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    if devices.torch_npu_import_error() is None:
        import torch_npu

        found["torch_npu"] = getattr(torch_npu, "__version__", "unknown")
        try:
            found["cann"] = torch_npu.npu.utils.get_cann_version()
        except Exception:
            found["cann"] = getattr(torch.version, "cann", None) or "unknown"
    return found


# The variable that makes each device type's launches synchronous.
LAUNCH_BLOCKING = {"cuda": "CUDA_LAUNCH_BLOCKING", "npu": "ASCEND_LAUNCH_BLOCKING"}


def timing_warnings(device: torch.device) -> list[str]:
    variable = LAUNCH_BLOCKING.get(device.type)
    if variable and os.environ.get(variable) == "1":
        return [f"{variable}=1 serialises {device.type} operator launches and distorts timings"]
    return []
