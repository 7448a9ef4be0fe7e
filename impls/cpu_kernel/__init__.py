"""Native CPU kernel: C++ forward and backward, registered as torch.library operators.

Built with torch.utils.cpp_extension into a cache directory, just in time on
first use or ahead of time with `python -m impls.cpu_kernel`. A failed build
makes this implementation unavailable with the compiler's message as the
reason; it never breaks the other implementations or test collection.

The C++ file defines `dcnv3_harness::dcnv3_forward` and `dcnv3_backward`,
the forward's autograd kernel (in C++: cheaper per call than Python's) and a
pybind11 `forward` that makes the same dispatcher call for less per call than
torch.ops; the fake-tensor (meta) kernels are registered here, so autograd,
torch.compile and torch.library.opcheck all see one ordinary operator.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

from impls import operators
from impls.registry import register

SOURCE = Path(__file__).with_name("dcnv3_cpu.cpp")
NAME = "dcnv3_harness_cpu"


def build_directory() -> Path:
    """DCNV3_BUILD_DIR, else a folder under ~/.cache per torch, machine (builds are -march=native) and
    copy of the source: a checkout and a `pip install .` of it would otherwise rebuild over each other."""
    configured = os.environ.get("DCNV3_BUILD_DIR")
    if configured:
        return Path(configured)
    version = torch.__version__.replace("+", "_")
    copy = hashlib.sha256(str(SOURCE).encode()).hexdigest()[:8]
    return Path.home() / ".cache" / "dcnv3-harness" / f"torch-{version}-{platform.machine()}-{copy}"


def _native_flags() -> list[str]:
    # aarch64 GCC spells "tune for this CPU" -mcpu=native. On x86, GCC's default of
    # 256-bit vectors on AVX-512 CPUs halved the set-up loop's width; the preference
    # is ignored where AVX-512 is absent.
    if platform.machine() in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return ["-march=native", "-mprefer-vector-width=512"]


def extension_directory(name: str) -> Path:
    """Where the extension `name` builds: a folder of its own under build_directory(). torch's build lock
    is a folder's, and a process that finds it held waits, then loads its own extension whether or not
    the build it waited on was that one: with two extensions in one folder, two processes starting cold
    at once had one load a library not yet built."""
    return build_directory() / name


_extension = None


def load_extension(name: str, source: Path, python_module: bool):
    """(the built or reused extension, None), or (None, the reason it did not build): the C++ source built
    with this kernel's flags into extension_directory(name). Shared by every operator's C++ kernel."""
    from torch.utils import cpp_extension

    directory = extension_directory(name)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(source)],
            build_directory=str(directory),
            # -fno-trapping-math: torch never reads floating-point exception flags, and
            # without it GCC keeps the per-point set-up loop scalar. -funroll-loops: the
            # forward's point loops ran 8-10% faster unrolled (InternImage-T, this machine).
            extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math", "-funroll-loops", *_native_flags()],
            extra_ldflags=["-fopenmp"],
            is_python_module=python_module,
            verbose=False,
        ), None
    except Exception as error:  # a compiler error, a missing compiler, a loader error
        lines = [line for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "error" in line.lower()), lines[0] if lines else repr(error))
        return None, f"the C++ kernel did not build in {directory}: {detail.strip()}"


@functools.lru_cache(maxsize=None)
def build_error() -> str | None:
    """Build (or reuse) and load the extension once per process; the reason it failed, or None."""
    global _extension
    extension, error = load_extension(NAME, SOURCE, python_module=True)
    if error is None:
        _extension = extension
        _register_fake_kernels()
    return error


def _register_fake_kernels() -> None:
    operators.register_fake_kernels("dcnv3_harness::dcnv3_forward", "dcnv3_harness::dcnv3_backward")


def _requires(device: torch.device) -> str | None:
    return build_error()


def _gradients(grad_output, input, offset, mask, scalars):
    # The same operator the C++ autograd (dcnv3_cpu.cpp) calls.
    return torch.ops.dcnv3_harness.dcnv3_backward(grad_output, input, offset, mask, *scalars)


@register("cpu_kernel", device_types=("cpu",), requires=_requires, priority=20, gradients=_gradients)
def cpu_kernel(input, offset, mask, params):
    """Native C++ kernel: channels-last, at::parallel_for, race-free backward, float accumulation."""
    if torch.compiler.is_compiling():  # Dynamo traces torch.ops, not a pybind function
        return torch.ops.dcnv3_harness.dcnv3_forward(input, offset, mask, *params.scalars())
    return _extension.forward(input, offset, mask, *params.scalars())
