"""DCNv3 on DCNv2 kernels and deployment runtimes: one mapping of (offset, mask, params) to the layouts they take.

The DCNv3 core op is a modulated deformable convolution with a depthwise
weight of ones and one deformable group per DCNv3 group (../shared/DCNv3.md,
last section). Three rewrites make a DCNv2 kernel compute it:

1. point order: DCNv3 numbers points x-major (p = i*kernel_h + j), DCNv2
   kernels row-major (k = j*kernel_w + i);
2. offset_scale folded into the offsets: dx2 = dx*s + (i*dilation_w - cw)*(s - 1),
   likewise dy2 with j, dilation_h, ch;
3. remove_center: the centre point put back with offset 0 and mask 0.

Everything here is ordinary differentiable tensor code, so autograd carries
the DCNv2 kernel's gradients back to DCNv3's offset and mask layout.
tests/dcnv2_models.py holds pure-PyTorch models of both kernels' documented
semantics, and tests/test_dcnv2_mapping.py proves mapping + model == the
reference on CPU for the output and all three gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from impls.params import DCNv3Params


@dataclass(frozen=True)
class Dcnv2Operands:
    """DCNv2-ordered operands, before either kernel's own packing.

    input: NCHW. dx, dy, mask: [N, G, K, Ho, Wo] with K = kernel_h*kernel_w row-major.
    """

    input: torch.Tensor
    dx: torch.Tensor
    dy: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor  # [C, 1, kernel_h, kernel_w] of ones: depthwise, groups = C


def _row_major_positions(params: DCNv3Params) -> list[int | None]:
    """For each DCNv2 point k (row-major), the DCNv3 point index p, or None for a removed centre."""
    dcnv3_index = {position: p for p, position in enumerate(params.kernel_points())}
    return [dcnv3_index.get((i, j)) for j in range(params.kernel_h) for i in range(params.kernel_w)]


def _folded_scale(params: DCNv3Params, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) added per row-major point so a DCNv2 kernel samples where DCNv3 does with offset_scale."""
    s = params.offset_scale
    ch, cw = params.window_centre
    i = torch.arange(params.kernel_w, dtype=dtype, device=device).repeat(params.kernel_h)
    j = torch.arange(params.kernel_h, dtype=dtype, device=device).repeat_interleave(params.kernel_w)
    return (i * params.dilation_w - cw) * (s - 1), (j * params.dilation_h - ch) * (s - 1)


def to_dcnv2(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, params: DCNv3Params) -> Dcnv2Operands:
    batch, out_h, out_w, _ = offset.shape
    group, points = params.group, params.points
    pairs = offset.reshape(batch, out_h, out_w, group, points, 2).permute(0, 3, 4, 5, 1, 2)
    weights = mask.reshape(batch, out_h, out_w, group, points).permute(0, 3, 4, 1, 2)
    # A zero slot after the last DCNv3 point stands in for a removed centre.
    pairs = torch.cat([pairs, torch.zeros_like(pairs[:, :, :1])], dim=2)
    weights = torch.cat([weights, torch.zeros_like(weights[:, :, :1])], dim=2)
    order = torch.tensor([points if p is None else p for p in _row_major_positions(params)], device=offset.device)
    pairs = pairs.index_select(2, order)
    weights = weights.index_select(2, order)
    # The centre of an odd kernel has i*dilation_w == cw: a removed centre keeps offset 0.
    shift_x, shift_y = _folded_scale(params, offset.device, offset.dtype)
    scale = params.offset_scale
    dx = pairs[:, :, :, 0] * scale + shift_x[:, None, None]
    dy = pairs[:, :, :, 1] * scale + shift_y[:, None, None]
    weight = input.new_ones(params.channels, 1, params.kernel_h, params.kernel_w)
    return Dcnv2Operands(input.permute(0, 3, 1, 2), dx, dy, weights, weight)


@dataclass(frozen=True)
class DeformConvOperands:
    """The layout torchvision's deform_conv2d, ONNX's DeformConv (opset 19) and OpenVINO's
    DeformableConvolution (opset 8, with bilinear_interpolation_pad) share. input: NCHW; offset:
    [N, 2*G*K, Ho, Wo] holding (dy, dx) pairs per row-major point; mask: [N, G*K, Ho, Wo]."""

    input: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor


def deform_conv_operands(input, offset, mask, params: DCNv3Params) -> DeformConvOperands:
    ops = to_dcnv2(input, offset, mask, params)
    batch, group, points, out_h, out_w = ops.dx.shape
    pairs = torch.stack([ops.dy, ops.dx], dim=3).reshape(batch, group * points * 2, out_h, out_w)
    return DeformConvOperands(ops.input, pairs, ops.mask.reshape(batch, group * points, out_h, out_w), ops.weight)


def torchvision_arguments(input, offset, mask, params: DCNv3Params) -> dict:
    """Keyword arguments of torchvision.ops.deform_conv2d, in its prototype's order."""
    ops = deform_conv_operands(input, offset, mask, params)
    return dict(
        input=ops.input, offset=ops.offset, weight=ops.weight, bias=None,
        stride=(params.stride_h, params.stride_w), padding=(params.pad_h, params.pad_w),
        dilation=(params.dilation_h, params.dilation_w), mask=ops.mask,
    )


def onnx_attributes(params: DCNv3Params) -> dict:
    """ONNX DeformConv's attributes (pads: top, left, bottom, right) for a depthwise weight of ones."""
    return dict(
        kernel_shape=[params.kernel_h, params.kernel_w], strides=[params.stride_h, params.stride_w],
        pads=[params.pad_h, params.pad_w, params.pad_h, params.pad_w],
        dilations=[params.dilation_h, params.dilation_w], group=params.channels, offset_group=params.group,
    )


def openvino_attributes(params: DCNv3Params) -> dict:
    """OpenVINO opset8.deformable_convolution's keyword arguments; bilinear_interpolation_pad makes a
    sample outside the image fade to zero over one pixel, as DCNv3's zero padding does."""
    return dict(
        strides=[params.stride_h, params.stride_w], pads_begin=[params.pad_h, params.pad_w],
        pads_end=[params.pad_h, params.pad_w], dilations=[params.dilation_h, params.dilation_w],
        group=params.channels, deformable_group=params.group, bilinear_interpolation_pad=True,
    )


def npu_arguments(input, offset, mask, params: DCNv3Params) -> dict:
    """torch_npu.npu_deformable_conv2d's arguments in its prototype's order; offset is [all dx | all dy | all masks]."""
    ops = to_dcnv2(input, offset, mask, params)
    batch, group, points, out_h, out_w = ops.dx.shape
    blocks = torch.cat([t.reshape(batch, group * points, out_h, out_w) for t in (ops.dx, ops.dy, ops.mask)], 1)
    return dict(
        input=ops.input, weight=ops.weight, offset=blocks, bias=None,
        kernel_size=[params.kernel_h, params.kernel_w],
        stride=[1, 1, params.stride_h, params.stride_w],
        padding=[params.pad_h, params.pad_h, params.pad_w, params.pad_w],
        dilation=[1, 1, params.dilation_h, params.dilation_w],
        groups=params.channels, deformable_groups=group, modulated=True,
    )


def from_nchw(output: torch.Tensor) -> torch.Tensor:
    """A DCNv2 kernel's NCHW output as DCNv3's [N, Ho, Wo, C]."""
    return output.permute(0, 2, 3, 1).contiguous()
