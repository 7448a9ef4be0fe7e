"""An emulated Ascend DrivingSDK (`mx_driving`): `multi_scale_deformable_attn` as its sources behave, on
the emulated NPU's tensors. Test-only, on PYTHONPATH beside the emulated torch_npu.

From DrivingSDK (Ascend/DrivingSDK, master of April 2026):
- mx_driving/ops/multi_scale_deformable_attn.py: a bare Exception on an empty value, spatial_shapes or
  attention_weights; the index tensors cast with `.int()`; a once-differentiable backward.
- mx_driving/csrc/MultiScaleDeformableAttn.cpp: float16 or float32 only (TORCH_CHECK, a RuntimeError),
  embed_dims <= 256 and num_levels * num_points <= 64 checked, float16 computed in float32 and the
  output and gradients cast back.
- kernels/multi_scale_deformable_attn/op_kernel/msda.h, ComputeLocation: the pair's first element is
  scaled by W_l (spatial_shapes[l][1]) and the second by H_l, the row; (x, y). With
  EMULATED_MX_DRIVING_LAYOUT=yx it reads (y, x) instead, as the documentation of 2024 said, for the
  test that shows the gate tells the two apart.
- A sample outside (-1, W_l) x (-1, H_l) contributes zero (ComputeLocation's valid flags), as does
  each corner outside its level: bilinear sampling with zeros outside, here by F.grid_sample.

The kernel's own float32 arithmetic and its speed are not emulated.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

__version__ = "0+emulated"


def _check(value, sampling_locations, attention_weights):
    for name, tensor in (("value", value), ("sampling_locations", sampling_locations),
                         ("attention_weights", attention_weights)):
        if tensor.dtype not in (torch.float16, torch.float32):
            raise RuntimeError(f"{name}: float16 or float32 tensor expected but got a tensor with dtype: {tensor.dtype}")
    if value.shape[3] > 256:
        raise RuntimeError("The number of embedding dimensions should be less than or equal to 256")
    if sampling_locations.shape[3] * sampling_locations.shape[4] > 64:
        raise RuntimeError("The product of the number of levels and the number of points should be less than "
                           "or equal to 64")


def _kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """aclnnMultiScaleDeformableAttn's result, in float32: [N, Lq, M*D]. Each level's values start where
    level_start_index says (PrepareShape reads it), not at a running sum of its own."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(start) for start in level_start_index.tolist()]
    pairs = sampling_locations.flip(-1) if os.environ.get("EMULATED_MX_DRIVING_LAYOUT") == "yx" else sampling_locations
    grids = 2 * pairs - 1  # grid_sample's (x, y) in [-1, 1], align_corners=False: the contract's pixel centres
    output = 0
    for level, ((height, width), start) in enumerate(zip(sizes, starts)):
        image = value[:, start:start + height * width].permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        output = output + (sampled * weights).sum(-1)
    return output.reshape(batch, heads * channels, queries).transpose(1, 2)


def _in_float32(*tensors):
    return [t.float() for t in tensors]


class MultiScaleDeformableAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights):
        if value.numel() == 0 or value_spatial_shapes.numel() == 0 or attention_weights.numel() == 0:
            raise Exception("Erorr! Input Tensor can not be a empty Tensor.\n")
        value_spatial_shapes = value_spatial_shapes.int()
        value_level_start_index = value_level_start_index.int()
        sampling_locations = sampling_locations.type_as(value)
        attention_weights = attention_weights.type_as(value)
        _check(value, sampling_locations, attention_weights)
        ctx.save_for_backward(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                              attention_weights)
        value32, locations32, weights32 = _in_float32(value, sampling_locations, attention_weights)
        output = _kernel(value32, value_spatial_shapes, value_level_start_index, locations32, weights32)
        return output.to(value.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        leaves = [t.detach().requires_grad_() for t in _in_float32(value, sampling_locations, attention_weights)]
        with torch.enable_grad():
            output = _kernel(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
            grads = torch.autograd.grad(output, leaves, grad_output.float())
        grad_value, grad_locations, grad_weights = (g.to(value.dtype) for g in grads)
        return grad_value, None, None, grad_locations, grad_weights


multi_scale_deformable_attn = MultiScaleDeformableAttnFunction.apply
