"""torch.npu as the emulation provides it (torch_npu registers its `torch_npu.npu` as torch.npu).

Only what the harness calls, with torch_npu's names and signatures: availability and counts,
synchronisation, streams (in order with each other: see Stream), timing events, the caching allocator's statistics, the device's name and
properties (910B3: 20 cube cores, 40 vector cores), and the HF32 switch for convolutions.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import weakref
from pathlib import Path
from types import SimpleNamespace

from torch_npu.npu import utils  # noqa: F401  (torch_npu.npu.utils.get_cann_version)

DEVICE_NAME = "Ascend910B3"


def _build_device_guard() -> ctypes.CDLL:
    """device_guard.cpp (the device guard, and the current device it keeps per thread), built with g++
    against the running torch's headers and c10, cached by content."""
    import torch

    root = Path(torch.__file__).parent
    source = Path(__file__).with_name("device_guard.cpp")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    key = hashlib.sha256(repr((source.read_text(), torch.__version__, str(root), abi)).encode()).hexdigest()[:16]
    library = Path.home() / ".cache" / "dcnv3-harness" / "emulated-npu" / f"device_guard-{key}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_name(f"{library.name}.{os.getpid()}")  # processes building at once never share one
        subprocess.run(["g++", "-std=c++17", "-O1", "-fPIC", "-shared", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                        f"-I{root / 'include'}", str(source), f"-L{root / 'lib'}", "-lc10", "-o", str(partial)],
                       check=True, capture_output=True)
        partial.replace(library)
    return ctypes.CDLL(str(library))


device_guard = _build_device_guard()


def _visible() -> int:
    """Devices this process sees: the host's EMULATED_NPU_DEVICES (default 1; 0: torch_npu loads but sees
    no device, a host whose driver lists none), narrowed by ASCEND_RT_VISIBLE_DEVICES as CANN documents it
    (envref_07_0028): comma-separated ids in ascending order, read up to the first that is not a valid id."""
    host = int(os.environ.get("EMULATED_NPU_DEVICES", "1"))
    if host > device_guard.emulated_npu_host_devices():
        raise ValueError(f"EMULATED_NPU_DEVICES={host}: the emulation models hosts of at most "
                         f"{device_guard.emulated_npu_host_devices()} NPUs")
    listed = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    if listed is None:
        return host
    ids: list[int] = []
    for part in listed.split(","):
        if not part.isdigit() or int(part) >= host or (ids and int(part) <= ids[-1]):
            break
        ids.append(int(part))
    return len(ids)


class _Conv:
    """`torch.npu.conv.allow_hf32`: True by default, as torch_npu documents."""

    allow_hf32 = True


conv = _Conv()


def is_available() -> bool:
    return _visible() > 0


def is_initialized() -> bool:
    return True


def _is_in_bad_fork() -> bool:
    return False


def device_count() -> int:
    return _visible()


def current_device() -> int:
    return device_guard.emulated_npu_current_device()


def set_device(device) -> None:
    device_guard.emulated_npu_set_device(_check(device))


def manual_seed_all(seed: int) -> None:
    """CPU data: torch.manual_seed's CPU generator already covers it."""


def _index(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):  # "npu", "npu:1": torch_npu takes names as torch.device does
        return int(device.split(":")[1]) if ":" in device else 0
    return device.index or 0


def _check(device) -> int:
    index = _index(device)
    if not 0 <= index < _visible():
        raise AssertionError("Invalid device id")
    return index


def synchronize(device=None) -> None:
    """Work on the emulated device is done when the call returns."""
    _check(device)


def get_device_name(device=None) -> str:
    _check(device)
    return DEVICE_NAME


def get_device_properties(device=None):
    _check(device)
    return SimpleNamespace(name=DEVICE_NAME, total_memory=64 * 2**30, cube_core_num=20, vector_core_num=40,
                           L2_cache_size=192 * 2**20)


class Stream:
    """torch.npu.Stream(device=None, priority=0) (torch_npu/npu/streams.py). The emulated device runs each
    operator when it is issued, so every stream is always in order with every other: a kernel that
    ignores the current stream cannot be caught here, only on a real device."""

    def __init__(self, device=None, priority: int = 0, **kwargs):
        self.device_index = _check(device)

    def synchronize(self) -> None:
        """Work on the emulated device is done when the call returns."""


_current_streams: list[Stream] = []


class StreamContext:
    """torch.npu.stream(stream) (torch_npu/npu/utils.py StreamContext): makes stream current; None: no-op."""

    def __init__(self, stream_ctx: Stream | None):
        self.stream = stream_ctx

    def __enter__(self):
        if self.stream is not None:
            _current_streams.append(self.stream)

    def __exit__(self, *exception) -> None:
        if self.stream is not None:
            _current_streams.pop()


def stream(stream_ctx: Stream | None) -> StreamContext:
    return StreamContext(stream_ctx)


def current_stream(device=None) -> Stream:
    return _current_streams[-1] if _current_streams else Stream(device)


class _Memory:
    """Bytes of live npu storages, counted once per storage however many tensors view it."""

    def __init__(self):
        self.allocated = 0
        self.peak = 0
        self._views: dict[int, list] = {}

    def track(self, wrapper, cpu) -> None:
        storage = cpu.untyped_storage()
        address, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        entry = self._views.get(address)
        if entry is None:
            entry = self._views[address] = [0, size]
            self.allocated += size
            self.peak = max(self.peak, self.allocated)
        entry[0] += 1
        weakref.finalize(wrapper, self._release, address)

    def _release(self, address: int) -> None:
        entry = self._views[address]
        entry[0] -= 1
        if entry[0] == 0:
            del self._views[address]
            self.allocated -= entry[1]


_memory = _Memory()


def memory_allocated(device=None) -> int:
    _check(device)
    return _memory.allocated


def max_memory_allocated(device=None) -> int:
    _check(device)
    return _memory.peak


def reset_peak_memory_stats(device=None) -> None:
    _check(device)
    _memory.peak = _memory.allocated
