"""The Ascend C kernel's own source, built with g++ against an emulated Ascend C API and run on the CPU.

Test-only. `kernel_operator.h` here is the emulated API (its header says what each behaviour follows
and what it cannot show); `torch_npu/csrc/core/npu/NPUStream.h` the one stream call of the host code.
Two builds of the unchanged source:

- `build_driver()`: impls/ascendc/dcnv3_kernel.h (the device code and its host-side checks) behind a
  C ABI (driver.cpp), no torch, in seconds: the parity problems, the hypothesis strategies and the
  planted bugs run through it (`implementation`).
- `build_library()`: the whole of impls/ascendc/dcnv3_ascendc.asc, host code and torch.library
  registration included, its `<<<blocks, l2ctrl, stream>>>` launches rewritten into
  `ascendc_emulation::Launch` calls and its PrivateUse1 kernels registered for the CPU as well, which
  the emulated NPU (tests/emulated_npu) runs its device kernels on: `DCNV3_ASCENDC_LIBRARY` pointed at
  it makes the `ascendc` implementation available there (`nox -s npu-emulated`).

Builds are cached by content under ~/.cache/dcnv3-harness/emulated-ascendc.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from impls.ascendc import tiling
from impls.params import DCNv3Params
from impls.registry import Implementation

HERE = Path(__file__).resolve().parent
KERNEL_DIR = HERE.parents[1] / "impls" / "ascendc"
KERNEL_HEADER = KERNEL_DIR / "dcnv3_kernel.h"
HOST_SOURCE = KERNEL_DIR / "dcnv3_ascendc.asc"
CACHE = Path.home() / ".cache" / "dcnv3-harness" / "emulated-ascendc"
UB_VARIABLE = "ASCENDC_EMULATED_UB_BYTES"
LAUNCH = re.compile(r"(\w+)<<<(.+?),\s*(\w+),\s*(\w+)>>>\(")
# The emulated NPU runs a custom operator's device kernel on its tensors' CPU data.
CPU_REGISTRATION = """
TORCH_LIBRARY_IMPL(dcnv3_ascendc, CPU, m)
{
    m.impl("forward", TORCH_FN(dcnv3_ascendc::forward));
    m.impl("backward", TORCH_FN(dcnv3_ascendc::backward));
}
"""
# What driver.cpp reports of a launch (its Counter enum, in order).
COUNTERS = ("copies_in", "copies_out", "bytes_in", "bytes_out", "barriers", "flags", "vector_ops", "scalar_ub",
            "ub_bytes", "stores_min", "stores_max")


def compiler_missing() -> str | None:
    return None if shutil.which("g++") else "no C++ compiler (g++) on PATH to build the emulated Ascend C kernel"


def rewrite_launches(source: str) -> str:
    """`kernel<<<blocks, l2ctrl, stream>>>(args)` -> `ascendc_emulation::Launch(blocks, stream, kernel, args)`."""
    rewritten, launches = LAUNCH.subn(r"ascendc_emulation::Launch(\2, \4, \1, ", source)
    if launches == 0:
        raise ValueError("no <<<...>>> launch found to rewrite")
    return rewritten


def _compile(name: str, sources: dict[str, str], flags: list[str], libraries: list[str] = ()) -> Path:
    """g++ on `sources` (file name -> text, the first compiled, the rest on its include path), cached by
    content; each build in a folder of its own, so that two test workers building at once never read
    each other's half-written files."""
    emulation = [path.read_text() for path in sorted(HERE.rglob("*.h"))]
    key = hashlib.sha256(repr((sorted(sources.items()), flags, libraries, emulation)).encode()).hexdigest()[:16]
    library = CACHE / f"{name}-{key}.so"
    if library.exists():
        return library
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        for file, text in sources.items():
            (Path(work) / file).write_text(text)
        partial = Path(work) / library.name
        command = ["g++", "-std=c++17", "-fPIC", "-shared", f"-I{work}", f"-I{HERE}", f"-I{KERNEL_DIR}", *flags,
                   str(Path(work) / next(iter(sources))), *libraries, "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"the emulated Ascend C build failed:\n{result.stderr[-4000:]}")
        partial.replace(library)
    return library


def build_driver(kernel_header: str | None = None, sanitize: bool = False) -> Path:
    """driver.cpp with the kernel header (its text replaced by `kernel_header` for a planted bug)."""
    flags = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    return _compile("driver", {"driver.cpp": (HERE / "driver.cpp").read_text(),
                               "dcnv3_kernel.h": kernel_header or KERNEL_HEADER.read_text()}, flags)


def build_library() -> Path:
    """The whole .asc, launches rewritten, as a torch.library extension for the emulated NPU."""
    from torch.utils import cpp_extension

    source = rewrite_launches(HOST_SOURCE.read_text()) + CPU_REGISTRATION
    flags = ["-O2", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *(f"-I{p}" for p in cpp_extension.include_paths())]
    libraries = [*(f"-L{p}" for p in cpp_extension.library_paths()), "-lc10", "-ltorch", "-ltorch_cpu"]
    return _compile("dcnv3_ascendc", {"dcnv3_ascendc.cpp": source, "dcnv3_kernel.h": KERNEL_HEADER.read_text()},
                    flags, libraries)


class EmulationFault(RuntimeError):
    """The emulated API refused what the kernel did, or the host checks refused the launch."""


@dataclass(frozen=True)
class Device:
    """The plan's device: vector cores and unified buffer, which the emulator then enforces."""

    vector_cores: int = tiling.VECTOR_CORES
    ub_capacity: int = tiling.UB_BYTES

    @property
    def ub_for_kernel(self) -> int:
        return self.ub_capacity - tiling.UB_RESERVED_BYTES


DEVICE_910B3 = Device()
# Few cores and a small UB: several tiles per core, short last tiles, more than one tile per group.
SMALL_DEVICE = Device(vector_cores=3, ub_capacity=tiling.UB_RESERVED_BYTES + 12 * 1024)


class Driver:
    def __init__(self, library: Path):
        self._run = ctypes.CDLL(str(library)).dcnv3_emulated_run
        self._run.restype = ctypes.c_int

    def run(self, backward: bool, params: DCNv3Params, tensors: list[np.ndarray], out_shapes, device: Device,
            block_pixels: int | None = None, blocks: int | None = None):
        """Outputs (float32 arrays) and counters of one launch under `device`'s plan (or the given tiling)."""
        input, offset = tensors[0], tensors[1]
        batch, height, width, _ = input.shape
        _, out_h, out_w, _ = offset.shape
        plan = tiling.plan(batch, out_h, out_w, params, backward=backward, vector_cores=device.vector_cores,
                           ub_capacity=device.ub_capacity)
        block_pixels = plan.block_pixels if block_pixels is None else block_pixels
        blocks = plan.blocks if blocks is None else blocks
        arrays = [np.ascontiguousarray(t, dtype=np.float32) for t in tensors]
        outputs = [np.full(shape, np.nan, dtype=np.float32) for shape in out_shapes]
        if backward:
            outputs[0][...] = 0  # grad_input is accumulated atomically, as the host code zeroes it
        pointers = (ctypes.POINTER(ctypes.c_float) * 3)(*(o.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                                                          for o in outputs))
        shape = (ctypes.c_int64 * 5)(batch, height, width, out_h, out_w)
        s = params
        geometry = (ctypes.c_int64 * 10)(s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h, s.pad_w,
                                         s.dilation_h, s.dilation_w, s.group, s.group_channels)
        counters = (ctypes.c_uint64 * len(COUNTERS))()
        error = ctypes.create_string_buffer(4096)
        floats = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]
        grad_output = floats[3] if backward else None
        previous = os.environ.get(UB_VARIABLE)
        os.environ[UB_VARIABLE] = str(device.ub_for_kernel)
        try:
            failed = self._run(int(backward), shape, geometry, ctypes.c_double(s.offset_scale), int(s.remove_center),
                               block_pixels, blocks, floats[0], floats[1], floats[2], grad_output, pointers, counters,
                               error, len(error))
        finally:
            if previous is None:
                del os.environ[UB_VARIABLE]
            else:
                os.environ[UB_VARIABLE] = previous
        if failed:
            raise EmulationFault(error.value.decode())
        return outputs, dict(zip(COUNTERS, counters))


def implementation(driver: Driver, device: Device = DEVICE_910B3) -> Implementation:
    """The emulated kernel as an implementation (float32, cpu): forward and backward launches under `device`'s plan."""

    def numpy(tensor):
        return tensor.detach().to(torch.float32).numpy()

    class EmulatedAscendC(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, offset, mask, params):
            ctx.save_for_backward(input, offset, mask)
            ctx.params = params
            out_shape = (*offset.shape[:3], input.shape[3])
            (output,), _ = driver.run(False, params, [numpy(input), numpy(offset), numpy(mask)], [out_shape], device)
            return torch.from_numpy(output)

        @staticmethod
        def backward(ctx, grad_output):
            input, offset, mask = ctx.saved_tensors
            tensors = [numpy(t) for t in (input, offset, mask, grad_output)]
            grads, _ = driver.run(True, ctx.params, tensors, [t.shape for t in tensors[:3]], device)
            return (*(torch.from_numpy(g) for g in grads), None)

    return Implementation(name="ascendc-emulated", fn=EmulatedAscendC.apply, dtypes=frozenset({torch.float32}),
                          device_types=("cpu",))

