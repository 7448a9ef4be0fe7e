"""Ascend C kernel (dcnv3_ascendc.asc): available on an NPU once `nox -s build-ascendc` has built it.

The library is `$DCNV3_ASCENDC_LIBRARY`, else impls/ascendc/build/libdcnv3_ascendc.so.
Loading it registers `torch.ops.dcnv3_ascendc.forward` / `backward` for the NPU
(PrivateUse1); autograd and fake kernels are registered here. The tiling the
kernel runs with is tiling.plan()'s, computed here and passed in, so the tiling
CI tests is the one the device uses. In CI the library is the kernel's source
built on an emulated Ascend C API (tests/emulated_ascendc) and loaded on the
emulated NPU; it has never been compiled by CANN or run on an NPU.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from impls import devices, operators
from impls.ascendc import tiling
from impls.params import DCNv3Params
from impls.registry import register

DEFAULT_LIBRARY = Path(__file__).with_name("build") / "libdcnv3_ascendc.so"


def library_path() -> Path:
    return Path(os.environ.get("DCNV3_ASCENDC_LIBRARY", DEFAULT_LIBRARY))


@functools.lru_cache(maxsize=None)
def load_error() -> str | None:
    """Load the built library once; why it is unavailable, or None."""
    path = library_path()
    if not path.exists():
        return f"the Ascend C kernel is not built ({path} is missing): run nox -s build-ascendc on an Ascend host"
    try:
        torch.ops.load_library(str(path))
    except Exception as error:
        return f"the Ascend C kernel at {path} did not load: {devices.describe(error)}"
    _register_autograd_and_fake()
    return None


def _plan(offset: torch.Tensor, scalars, backward: bool) -> tiling.Plan:
    """The tiling for the NPU the tensors are on: its own vector core count, else the 910B3's."""
    batch, out_h, out_w, _ = offset.shape
    cores = devices.npu_vector_cores(offset.device) or tiling.VECTOR_CORES
    return tiling.plan(batch, out_h, out_w, DCNv3Params(*scalars), backward=backward, vector_cores=cores)


def _gradients(grad_output, input, offset, mask, scalars):
    parameters = scalars[:12]  # without the forward's tiling
    plan = _plan(offset, parameters, backward=True)
    return torch.ops.dcnv3_ascendc.backward(
        grad_output, input, offset, mask, *parameters, plan.block_pixels, plan.blocks,
    )


def _register_autograd_and_fake() -> None:
    operators.register_fake_kernels("dcnv3_ascendc::forward", "dcnv3_ascendc::backward")
    operators.register_backward("dcnv3_ascendc::forward", _gradients)


def _requires(device: torch.device) -> str | None:
    return load_error()


@register("ascendc", dtypes=(torch.float32,), device_types=("npu",), requires=_requires, gradients=_gradients)
def ascendc(input, offset, mask, params):
    """Ascend C vector-core kernel for the 910B: pixel-block tiles per core, channel runs GM -> UB, atomic input gradient."""
    plan = _plan(offset, params.scalars(), backward=False)
    return torch.ops.dcnv3_ascendc.forward(input, offset, mask, *params.scalars(), plan.block_pixels, plan.blocks)
