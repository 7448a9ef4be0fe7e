"""DCNv3 implementations behind one interface.

    impls.names()                 -> registered implementation names
    impls.get(name)(input, offset, mask, params)
    impls.dcnv3(...)              -> drop-in for InternImage's DCNv3Function.apply
    impls.nn.DCNv3(...)           -> drop-in for InternImage's DCNv3 nn.Module (impls/nn.py)
    impls.internimage.build("T")  -> an InternImage backbone on it, for model-level parity and benchmarks
    impls.msda                    -> the second operator, multi-scale deformable attention (impls/msda/)
"""

from __future__ import annotations

import torch

from impls import ascendc as _ascendc  # noqa: F401  (registers; loads the built library on first use)
from impls import compiled as _compiled  # noqa: F401  (registers)
from impls import cpu_kernel as _cpu_kernel  # noqa: F401  (registers; builds on first use)
from impls import grid_sample as _grid_sample  # noqa: F401  (registers)
from impls import internimage_cuda as _internimage_cuda  # noqa: F401  (registers; imports DCNv3 on first use)
from impls import npu_deform_conv as _npu_deform_conv  # noqa: F401  (registers)
from impls import msda, onnx_export
from impls import onnx_runtime as _onnx_runtime  # noqa: F401  (registers; exports and imports onnxruntime on first use)
from impls import openvino_runtime as _openvino_runtime  # noqa: F401  (registers; imports openvino on first use)
from impls import optimized as _optimized  # noqa: F401  (registers)
from impls import reference as _reference  # noqa: F401  (registers)
from impls import torchvision_deform as _torchvision_deform  # noqa: F401  (registers)
from impls import triton_kernel as _triton_kernel  # noqa: F401  (registers; imports triton on first use)
from impls.params import DCNv3Params, validate
from impls.registry import ENTRY_POINT_GROUP, Implementation, auto, baseline, get, names, needs_gradient, register

__all__ = [
    "DCNv3Params",
    "ENTRY_POINT_GROUP",
    "Implementation",
    "baseline",
    "dcnv3",
    "get",
    "msda",
    "names",
    "register",
    "validate",
]


def dcnv3(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    im2col_step: int,
    remove_center: bool,
    impl: str = "auto",
) -> torch.Tensor:
    """InternImage's `DCNv3Function.apply(...)` argument order; im2col_step never changes the result.

    impl="auto" picks the highest-priority implementation available on the
    input's device for its dtype (one with a backward where a gradient is needed); any registered name
    forces that one. Under torch.onnx.export it is one standard DeformConv node (impls/onnx_export.py).
    """
    params = DCNv3Params(
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
        group, group_channels, offset_scale, remove_center,
    )
    if onnx_export.exporting():
        # The deployed graph runs none of the harness's implementations: the standard DeformConv stands in.
        validate(input, offset, mask, params)
        return onnx_export.deform_conv(input, offset, mask, params)
    if impl != "auto":
        return get(impl)(input, offset, mask, params)
    validate(input, offset, mask, params)
    # auto() returns an implementation available here for this dtype: no second check.
    return auto(input.device, input.dtype, needs_gradient(input, offset, mask)).fn(input, offset, mask, params)
