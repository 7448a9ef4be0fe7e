"""The one place that knows cpu, cuda and npu.

How torch_npu arrives. torch >= 2.5 imports every installed device backend
during `import torch` (the `torch.backends` entry point that torch_npu
declares), unless TORCH_DEVICE_BACKEND_AUTOLOAD=0. So on an Ascend host
torch_npu is normally loaded before any line of the harness runs, and where it
cannot load (CANN's set_env.sh not sourced) `import torch` itself raises
"Failed to load the backend extension: torch_npu": no code after that import
can catch it. `python -m bench.preflight` is the harness's one answer there:
it imports torch with autoloading off and then torch_npu inside a try, so it
can say what failed in one sentence. With torch < 2.5, or autoloading off,
torch_npu loads here, lazily and inside a try (`torch_npu_import_error`).
Nothing else in the harness imports torch_npu.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import shutil
import time

import torch

DEVICE_TYPES = ("cpu", "cuda", "npu")
# Best first: what "auto" picks when several are present.
PREFERENCE = ("npu", "cuda", "cpu")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def describe(error: BaseException) -> str:
    """`Type: first line of the message`: an error as a one-line reason."""
    return f"{type(error).__name__}: {_first_line(error)}"


@functools.lru_cache(maxsize=None)
def torch_npu_import_error() -> str | None:
    """None when torch_npu imports (registering the npu device), else the reason."""
    try:
        import torch_npu  # noqa: F401
    except Exception as error:  # any failure, an OSError from CANN's libraries included
        return f"torch_npu not importable: {_first_line(error)}"
    return None


def type_of(device: torch.device | str) -> str:
    """'npu:0' -> 'npu' without building a torch.device, which fails for npu before torch_npu loads."""
    return device.type if isinstance(device, torch.device) else str(device).split(":", 1)[0]


def unavailable_reason(device_type: str) -> str | None:
    """A sentence saying why the device type cannot run here, or None when it can."""
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device: torch.cuda.is_available() is False"
        return None
    if device_type == "npu":
        reason = torch_npu_import_error()
        if reason is not None:
            hint = "" if os.environ.get("ASCEND_HOME_PATH") else "; source CANN's set_env.sh"
            return f"no NPU: {reason}{hint}"
        if not torch.npu.is_available():
            return "no NPU: torch.npu.is_available() is False"
        return None
    return f"unknown device type {device_type!r} (known: {', '.join(DEVICE_TYPES)})"


@functools.lru_cache(maxsize=None)
def _stored_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    return torch.zeros(1, device=device_type).to(dtype).dtype


def dtype_unavailable_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why tensors of dtype cannot be computed with on an available device, or None.

    Asked of the device itself: torch_npu turns `.to(torch.float64)` into float32
    with a warning (no float64 arithmetic), so a float64 run there would be a
    float32 run under a float64 label.
    """
    device_type = type_of(device)
    if device_type == "cpu":
        return None
    stored = _stored_dtype(device_type, dtype)
    if stored != dtype:
        return f"{device_type} has no {dtype} arithmetic: .to({dtype}) gives {stored} there"
    return None


def npu_vector_cores(device: torch.device) -> int | None:
    """The NPU's vector core count, from torch_npu's device properties; None where it does not report one."""
    return getattr(torch.npu.get_device_properties(device), "vector_core_num", None)


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why torch.compile cannot build kernels for device here, or None."""
    return _compile_unavailable_reason(type_of(device))


@functools.lru_cache(maxsize=None)
def _compile_unavailable_reason(device_type: str) -> str | None:
    if device_type == "cpu":
        compilers = [os.environ.get("CXX", "g++"), "clang++"]
        if not any(shutil.which(c) for c in compilers):
            return f"torch.compile on cpu needs a C++ compiler (looked for {', '.join(compilers)})"
        return None
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on cuda needs triton"
    if device_type == "npu":
        if importlib.util.find_spec("torchair") is None:
            return "torch.compile on npu needs torchair (the vendor's compile backend), not installed"
        return None
    return f"torch.compile is not wired for {device_type}"


def compile_backend(device: torch.device):
    """torch.compile's backend for device: inductor, or torchair's NPU backend."""
    if device.type == "npu":
        import torchair  # after torch_npu, which unavailable_reason("npu") has imported

        return torchair.get_npu_backend(compiler_config=torchair.CompilerConfig())
    return "inductor"


def best_device_type() -> str:
    return next(d for d in PREFERENCE if unavailable_reason(d) is None)


def resolve(spec: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:1', 'npu', ... -> torch.device; ValueError when absent."""
    if spec == "auto":
        spec = best_device_type()
    reason = unavailable_reason(type_of(spec))
    if reason is not None:
        raise ValueError(f"device {spec!r} is not usable here: {reason}")
    return torch.device(spec)


# glibc recycles freed blocks below its largest mmap threshold (32 MB) from the
# heap; larger temporaries are mmapped and page-faulted in on every call.
CPU_TEMPORARY_BUDGET = 24 * 2**20


def temporary_budget_bytes(device: torch.device) -> int | None:
    """How large one pass's big temporaries should be on device; None: no limit.

    On CPU, implementations split the batch to stay under it (measured on the
    InternImage-T segmentation shapes); accelerators' caching allocators reuse
    blocks of any size, and fewer, larger launches pay there.
    """
    return CPU_TEMPORARY_BUDGET if device.type == "cpu" else None


def _accelerator(device: torch.device):
    """torch.cuda or torch.npu: the two share the event, memory and synchronise API."""
    return {"cuda": torch.cuda, "npu": getattr(torch, "npu", None)}.get(device.type)


def synchronize(device: torch.device) -> None:
    module = _accelerator(device)
    if module is not None:
        module.synchronize(device)


def has_streams(device: torch.device) -> bool:
    return _accelerator(device) is not None


def side_stream(device: torch.device):
    """A context that makes a new stream of device current: torch.cuda.stream, and torch_npu's
    torch.npu.stream with the same API (Ascend/pytorch torch_npu/npu/streams.py, utils.py)."""
    module = _accelerator(device)
    return module.stream(module.Stream(device))


def keep_busy(device: torch.device) -> None:
    """Queue a few milliseconds of work on device's current stream: on CUDA torch.cuda._sleep (what
    PyTorch's own stream tests use), on the NPU a matmul (torch_npu has no sleep kernel)."""
    if device.type == "cuda":
        torch.cuda._sleep(SLEEP_CYCLES)
    else:
        busy = torch.randn(BUSY_SIDE, BUSY_SIDE, device=device)
        busy @ busy


# About 5 ms at 2 GHz; a 2048-square float32 matmul is about 17 GFLOP.
SLEEP_CYCLES, BUSY_SIDE = 10_000_000, 2048


def profiler_clock(device: torch.device) -> tuple[list, bool, str]:
    """(torch.profiler activities, whether operator times are the device's own, what the times are)."""
    from torch.profiler import ProfilerActivity

    if device.type == "cuda":
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA], True, "cuda device time"
    if device.type == "npu":
        # NPU kernels are seen by torch_npu.profiler only; torch.profiler times their launches.
        return [ProfilerActivity.CPU], False, "npu host (launch) time"
    return [ProfilerActivity.CPU], False, "cpu time"


class Clock:
    """Elapsed milliseconds of one region: device events on cuda and npu, wall clock on cpu.

    torch.utils.benchmark.Timer is not on the vendor's list of NPU-supported
    APIs, so NPU timing uses torch.npu.Event like CUDA uses torch.cuda.Event.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._module = _accelerator(device)

    def start(self) -> None:
        if self._module is None:
            self._began = time.perf_counter()
        else:
            self._began = self._module.Event(enable_timing=True)
            self._began.record()

    def stop(self) -> float:
        if self._module is None:
            return (time.perf_counter() - self._began) * 1e3
        end = self._module.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self._began.elapsed_time(end)


# Larger than any current last-level cache (H200: 60 MB L2; 910B: 192 MB L2).
FLUSH_BYTES = 512 * 2**20


def cache_flusher(device: torch.device):
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
        self._module = _accelerator(device)

    def __enter__(self) -> "PeakMemory":
        synchronize(self.device)
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
        synchronize(self.device)
        if self._module is not None:
            peak = self._module.max_memory_allocated(self.device)
        else:
            peak = _cpu_resident_bytes("VmHWM")
            _glibc_heap().steady()
        self.bytes = max(0, peak - self._baseline)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    module = _accelerator(device)
    return cpu_model() if module is None else module.get_device_name(device)


def versions() -> dict[str, str]:
    """torch, and torch_npu and CANN where torch_npu imports."""
    found = {"torch": torch.__version__}
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    if torch_npu_import_error() is None:
        import torch_npu

        found["torch_npu"] = getattr(torch_npu, "__version__", "unknown")
        try:
            found["cann"] = torch_npu.npu.utils.get_cann_version()
        except Exception:
            found["cann"] = getattr(torch.version, "cann", None) or "unknown"
    return found


def timing_warnings(device: torch.device) -> list[str]:
    warnings = []
    for variable in ("ASCEND_LAUNCH_BLOCKING", "CUDA_LAUNCH_BLOCKING"):
        if os.environ.get(variable) == "1":
            warnings.append(f"{variable}=1 serialises operator launches and distorts timings")
    return warnings
