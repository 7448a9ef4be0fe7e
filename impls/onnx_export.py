"""DCNv3 as standard ONNX: one `DeformConv` node (opset 19) per call, whatever implementation runs it in PyTorch.

Under `torch.onnx.export(..., dynamo=True)` the harness's operator (`impls.dcnv3`, `impls.nn.DCNv3`)
does not run an implementation: it emits the DCNv2 mapping (impls/dcnv2_mapping.py: the point
reordering, the (dx, dy) -> (dy, dx) swap, the offset_scale fold and a removed centre put back with
mask 0) as ordinary tensor code, which the exporter writes as plain ONNX ops, then the DeformConv node
itself through `torch.onnx.ops.symbolic` (torch >= 2.8), with the depthwise weight of ones as an
initializer, `group = C` and `offset_group = G`. No custom domain, no translation table to pass:

    torch.onnx.export(model.eval(), (image,), "model.onnx", dynamo=True)

The TorchScript exporter (`dynamo=False`) is not supported: it cannot write a node with an omitted
optional input (DeformConv's bias) through `torch.onnx.ops`, and says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from impls import dcnv2_mapping
from impls.params import DCNv3Params

OPSET = 19


def exporting() -> bool:
    """True while torch.onnx.export traces the model (either exporter)."""
    return torch.onnx.is_in_onnx_export()


def deform_conv(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, params: DCNv3Params) -> torch.Tensor:
    """The output [N, Ho, Wo, C] as the exporter sees it: the mapping, then one DeformConv node."""
    if not hasattr(torch.onnx, "ops"):
        raise RuntimeError(f"DCNv3's ONNX export needs torch >= 2.8 (torch.onnx.ops); this is {torch.__version__}")
    if not torch.compiler.is_exporting():
        raise RuntimeError("DCNv3 exports to ONNX through the dynamo-based exporter only: call "
                           "torch.onnx.export(..., dynamo=True) (the TorchScript exporter cannot omit "
                           "DeformConv's bias)")
    ops = dcnv2_mapping.deform_conv_operands(input, offset, mask, params)
    batch, channels = ops.input.shape[:2]
    out_h, out_w = offset.shape[1:3]
    output = torch.onnx.ops.symbolic(
        "DeformConv", (ops.input, ops.weight, ops.offset, None, ops.mask), dcnv2_mapping.onnx_attributes(params),
        dtype=input.dtype, shape=(batch, channels, out_h, out_w), version=OPSET,
    )
    return dcnv2_mapping.from_nchw(output)


def export_quietly(module: torch.nn.Module, args: tuple):
    """torch.onnx.export(module, args, dynamo=True)'s ONNX model, without the exporter's progress lines on
    stdout, its warnings about torchvision ops it cannot register, or torch's pytree deprecations."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.onnx.export(module, args, dynamo=True, verbose=False).model_proto
    finally:
        exporter_log.setLevel(level)
