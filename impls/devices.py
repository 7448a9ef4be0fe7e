"""The one place that knows cpu, cuda and npu: which devices exist here, what they are called, what
they compute in, and how to synchronise them. (The benchmark's instruments are in bench/instruments.py.)

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


def accelerator(device: torch.device | str):
    """torch.cuda or torch.npu (None for cpu): the two share the stream, memory and synchronise API."""
    return {"cuda": torch.cuda, "npu": getattr(torch, "npu", None)}.get(type_of(device))


def synchronize(device: torch.device | str) -> None:
    module = accelerator(device)
    if module is not None:
        module.synchronize(device)


def has_streams(device: torch.device) -> bool:
    return accelerator(device) is not None


def side_stream(device: torch.device):
    """A context that makes a new stream of device current: torch.cuda.stream, and torch_npu's
    torch.npu.stream with the same API (Ascend/pytorch torch_npu/npu/streams.py, utils.py)."""
    module = accelerator(device)
    return module.stream(module.Stream(device))


def another_device(device: torch.device) -> torch.device:
    """The host's last device of device's type other than device itself, or device where it is the only
    one: a kernel that launches on device 0 or allocates there whatever its tensors' device (DCNv4#100,
    an illegal memory access on cuda:1) fails on it."""
    module = accelerator(device)
    count = module.device_count() if module is not None else 1
    others = [index for index in range(count) if index != (device.index or 0)]
    return torch.device(device.type, others[-1]) if others else device


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
    module = accelerator(device)
    return cpu_model() if module is None else module.get_device_name(device)


# The variable that pins a process to some of the host's devices, read when the runtime starts: CUDA's
# CUDA_VISIBLE_DEVICES, and CANN's ASCEND_RT_VISIBLE_DEVICES (CANN's environment-variable reference,
# envref_07_0028: comma-separated device ids in ascending order; the process sees them as 0, 1, ...;
# it takes precedence over ASCEND_DEVICE_ID, which names one device only after the runtime started).
VISIBLE_DEVICES = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_devices(device_type: str, spec: str) -> list[int | None]:
    """`--devices all|N|0,3,5` on a device type: one entry per worker, the host's device index it is pinned
    to (None on cpu, whose workers share the cores: at most one per core). ValueError naming --devices."""
    if device_type == "cpu":
        cores = cpu_cores()
        count = cores if spec == "all" else int(spec) if spec.isdigit() else None
        if count is None or not 1 <= count <= cores:
            raise ValueError(f"--devices {spec}: on cpu, 'all' or a worker count in [1, {cores}] (the cores here)")
        return [None] * count
    present = accelerator(device_type).device_count()
    if spec == "all":
        return list(range(present))
    if spec.isdigit():
        chosen = list(range(int(spec)))
    elif all(part.isdigit() for part in spec.split(",")):
        chosen = [int(part) for part in spec.split(",")]
    else:
        raise ValueError(f"--devices {spec}: 'all', a count, or device indices such as 0,3,5")
    if not chosen or len(set(chosen)) != len(chosen) or max(chosen) >= present:
        raise ValueError(f"--devices {spec}: this host has {present} {device_type} device(s), 0 to {present - 1}, "
                         "each named once")
    return sorted(chosen)


def xdist_workers(device_type: str, workers: list[int | None]) -> list[str]:
    """pytest-xdist `--tx` specs for `workers` (worker_devices): a local process each, started with its
    device's visible-devices variable set, so that the runtime in it sees that device alone, as index 0."""
    variable = VISIBLE_DEVICES.get(device_type)
    return [f"popen//env:{variable}={index}" if index is not None else "popen" for index in workers]


def pinned_label(device_type: str) -> str:
    """The device this process was pinned to by xdist_workers, as rows name it: `npu:3` (the host's index),
    or `cpu (gw0)` (the xdist worker) on cpu."""
    variable = VISIBLE_DEVICES.get(device_type)
    if variable and os.environ.get(variable, "").isdigit():
        return f"{device_type}:{os.environ[variable]}"
    return f"{device_type} ({os.environ.get('PYTEST_XDIST_WORKER', 'this process')})"
