"""Ascend C kernel (dcnv3_ascendc.asc): available on an NPU once `nox -s build-ascendc` has built it.

The library is `$DCNV3_ASCENDC_LIBRARY`, else impls/ascendc/build/libdcnv3_ascendc.so.
Loading it registers `torch.ops.dcnv3_ascendc.forward` / `backward` for the NPU
(PrivateUse1); autograd and fake kernels are registered here. The tiling the
kernel runs with is tiling.plan()'s, computed here and passed in, so the tiling
CI tests is the one the device uses. Never compiled or run by this project.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

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
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"the Ascend C kernel at {path} did not load: {type(error).__name__}: {first_line}"
    _register_autograd_and_fake()
    return None


def _plan(offset: torch.Tensor, scalars, backward: bool) -> tiling.Plan:
    batch, out_h, out_w, _ = offset.shape
    return tiling.plan(batch, out_h, out_w, DCNv3Params(*scalars), backward=backward)


def _register_autograd_and_fake() -> None:
    @torch.library.register_fake("dcnv3_ascendc::forward")
    def _(input, offset, mask, *scalars):
        return input.new_empty(*offset.shape[:3], input.shape[3])

    @torch.library.register_fake("dcnv3_ascendc::backward")
    def _(grad_output, input, offset, mask, *scalars):
        return torch.empty_like(input), torch.empty_like(offset), torch.empty_like(mask)

    def setup_context(ctx, inputs, output):
        input, offset, mask, *scalars = inputs
        ctx.save_for_backward(input, offset, mask)
        ctx.scalars = scalars[:12]  # the DCNv3 parameters, without the forward's tiling

    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        plan = _plan(offset, ctx.scalars, backward=True)
        grads = torch.ops.dcnv3_ascendc.backward(
            grad_output, input, offset, mask, *ctx.scalars, plan.block_pixels, plan.blocks,
        )
        return (*grads, *([None] * 14))

    torch.library.register_autograd("dcnv3_ascendc::forward", backward, setup_context=setup_context)


def _requires(device: torch.device) -> str | None:
    return load_error()


@register("ascendc", dtypes=(torch.float32,), device_types=("npu",), requires=_requires)
def ascendc(input, offset, mask, params):
    """Ascend C vector-core kernel for the 910B: pixel-block tiles per core, channel runs GM -> UB, atomic input gradient."""
    plan = _plan(offset, params.scalars(), backward=False)
    return torch.ops.dcnv3_ascendc.forward(input, offset, mask, *params.scalars(), plan.block_pixels, plan.blocks)
