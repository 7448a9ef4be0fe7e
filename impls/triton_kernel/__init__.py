"""Triton kernel (kernels.py), registered as the custom operators `dcnv3_triton::forward` / `backward`.

Where it runs:
- cuda, when Triton imports (it ships with PyTorch's CUDA wheels);
- npu, when triton-ascend (Huawei's Triton backend, `pip install triton-ascend`
  on a host with CANN and torch_npu) is installed and its driver sees the NPU;
  never run on a real NPU by this project (CI runs it on the emulated NPU,
  through the interpreter, with a stand-in for triton-ascend's driver);
- cpu, only under Triton's interpreter (`TRITON_INTERPRET=1`, set before the
  first use).
Under the interpreter, on any device, it is slow and for parity checks on
small shapes: never picked by `impl="auto"` nor timed by the benchmark.

Triton is imported lazily, on the first availability check, so a missing or
broken Triton makes this implementation unavailable with its error and
nothing else. The module deliberately has no `from __future__ import
annotations`: torch.library reads the operator schema from the annotations.
"""

import functools
import importlib
import os
from typing import Optional, Tuple

import torch

from impls import devices, operators
from impls.registry import register

INTERPRETER = "TRITON_INTERPRET"


@functools.lru_cache(maxsize=None)
def import_kernels(module: str):
    """A Triton kernels module (DCNv3's, MSDA's), or the import error's first line."""
    try:
        return importlib.import_module(module)
    except Exception as error:
        return f"triton not importable: {devices.describe(error)}"


def _kernels():
    return import_kernels("impls.triton_kernel.kernels")


def interpreted() -> bool:
    return os.environ.get(INTERPRETER) == "1"


def _ascend_backend_reason() -> Optional[str]:
    """None when the active Triton driver is triton-ascend's and sees the current NPU."""
    import triton

    try:
        triton.runtime.driver.active.utils.get_device_properties(torch.npu.current_device())
    except Exception as error:
        return (
            "triton does not target the NPU here (install triton-ascend, Huawei's Triton backend): "
            + devices.describe(error)
        )
    return None


def unavailable_reason(device: torch.device) -> Optional[str]:
    if device.type == "cpu" and not interpreted():
        return f"triton runs on cpu only under its interpreter: set {INTERPRETER}=1 (slow; parity checks only)"
    kernels = _kernels()
    if isinstance(kernels, str):
        return kernels
    if device.type == "npu":
        return _ascend_backend_reason()
    return None


@torch.library.custom_op("dcnv3_triton::forward", mutates_args=())
def forward_op(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    dilation_h: int, dilation_w: int, group: int, group_channels: int,
    offset_scale: float, remove_center: bool,
) -> torch.Tensor:
    scalars = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
               group, group_channels, offset_scale, remove_center)
    return _kernels().forward(input, offset, mask, scalars)


@torch.library.custom_op("dcnv3_triton::backward", mutates_args=())
def backward_op(
    grad_output: torch.Tensor, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
    dilation_h: int, dilation_w: int, group: int, group_channels: int,
    offset_scale: float, remove_center: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scalars = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
               group, group_channels, offset_scale, remove_center)
    return _kernels().backward(grad_output, input, offset, mask, scalars)


operators.register_fake_kernels("dcnv3_triton::forward", "dcnv3_triton::backward")
def _gradients(grad_output, input, offset, mask, scalars):
    return backward_op(grad_output, input, offset, mask, *scalars)


operators.register_backward("dcnv3_triton::forward", _gradients)


@register(
    "triton", dtypes=(torch.float32, torch.float16, torch.bfloat16), device_types=("cuda", "npu", "cpu"),
    requires=unavailable_reason, priority=30, interpreted=interpreted,
    gradients=_gradients,
)
def triton_kernel(input, offset, mask, params):
    """Triton kernels: a program per pixel block and group, float32 accumulation, atomic input gradient."""
    return forward_op(input, offset, mask, *params.scalars())
