"""DCNv3 on OpenVINO's DeformableConvolution (opset 8), compiled for its CPU plug-in.

The operands take the DeformConv layout of impls/dcnv2_mapping.py (computed here in torch), and the
model is one DeformableConvolution with the depthwise weight of ones as a constant,
`bilinear_interpolation_pad=True`, compiled once per shape and parameters and kept. Forward only.
float32 only: the CPU plug-in computes an f64 model in f32, and on CPUs with bf16 or fp16 units it
lowers f32 models to them unless told otherwise, so the inference precision is pinned to f32 (what is
checked is float32 arithmetic), with as many threads as torch uses.
"""

from __future__ import annotations

import functools
import math

import torch

from impls import dcnv2_mapping, devices
from impls.params import DCNv3Params
from impls.registry import register


@functools.lru_cache(maxsize=None)
def _load_error() -> str | None:
    try:
        import openvino  # noqa: F401
    except Exception as error:
        return f"openvino is not importable: {devices.describe(error)}"
    return None


def _requires(device: torch.device) -> str | None:
    return _load_error()


@functools.lru_cache(maxsize=256)
def _compiled(input_shape, offset_shape, mask_shape, params: DCNv3Params, threads: int):
    import numpy
    import openvino
    import openvino.opset8 as ops

    data, offset, mask = (ops.parameter(shape, numpy.float32) for shape in (input_shape, offset_shape, mask_shape))
    weight = ops.constant(numpy.ones((params.channels, 1, params.kernel_h, params.kernel_w), numpy.float32))
    output = ops.deformable_convolution(data, offset, weight, mask=mask, **dcnv2_mapping.openvino_attributes(params))
    model = openvino.Model([output], [data, offset, mask], "dcnv3")
    return openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                        "INFERENCE_NUM_THREADS": threads})


@register("openvino", dtypes=(torch.float32,), device_types=("cpu",), requires=_requires, priority=-10,
          forward_only=True)
def openvino_runtime(input, offset, mask, params):
    """OpenVINO's DeformableConvolution on its CPU plug-in (f32 precision pinned); forward only."""
    output_shape = (*offset.shape[:3], params.channels)
    if math.prod(output_shape) == 0:
        return input.new_empty(output_shape)
    operands = dcnv2_mapping.deform_conv_operands(input, offset, mask, params)
    tensors = [t.contiguous() for t in (operands.input, operands.offset, operands.mask)]
    model = _compiled(*(tuple(t.shape) for t in tensors), params, torch.get_num_threads())
    result = model([t.numpy() for t in tensors])[model.output(0)]
    return dcnv2_mapping.from_nchw(torch.from_numpy(result))
