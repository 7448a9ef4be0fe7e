"""The `F.grid_sample` fallback that InternImage ports run today: the baseline.

The algorithm of InternImage's `dcnv3_core_pytorch`, with the contract's two
corrections to that Python core:

1. padding: `F.pad` on an NHWC tensor takes (C, C, W, W, H, H) pairs; the
   published core passes pad_h for the width and pad_w for the height.
2. positions: the published core builds its grids in float32 whatever the
   dtype; here they are built in the compute dtype (float64 for float64).

float16 and bfloat16 sample in float32 and cast the result back, as the
contract asks (sum over points accumulated in float32); so does the CUDA
kernel, whose positions use float32 "opmath" for half. Backward is autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impls.params import DCNv3Params
from impls.registry import register


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _reference_points(params: DCNv3Params, padded_h, padded_w, out_h, out_w, device, dtype):
    """Normalised [0, 1] centre of each output pixel's kernel window: [1, Ho, Wo, 1, 2] (x, y)."""
    ch, cw = params.window_centre
    ys = (torch.arange(out_h, device=device, dtype=dtype) * params.stride_h + ch + 0.5) / padded_h
    xs = (torch.arange(out_w, device=device, dtype=dtype) * params.stride_w + cw + 0.5) / padded_w
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((ref_x, ref_y), -1).reshape(1, out_h, out_w, 1, 2)


def _kernel_grid(params: DCNv3Params, padded_h, padded_w, device, dtype):
    """Normalised displacement of each kept point from the window centre: [1, 1, 1, G*P, 2]."""
    displacements = [(dx / padded_w, dy / padded_h) for dy, dx in params.point_displacements()]
    grid = torch.tensor(displacements, device=device, dtype=dtype)
    return grid.repeat(params.group, 1).reshape(1, 1, 1, params.group * params.points, 2)


@register("grid_sample", baseline=True)
def grid_sample(input, offset, mask, params):
    """F.grid_sample fallback (InternImage's Python core, padding and position defects fixed)."""
    return dcnv3_grid_sample(input, offset, mask, params, compute_dtype(input.dtype))


def dcnv3_grid_sample(input, offset, mask, params: DCNv3Params, position_dtype: torch.dtype):
    """The fallback with sampling positions built in position_dtype (float32 is the published defect)."""
    out_dtype = input.dtype
    dtype = compute_dtype(out_dtype)
    input, mask = input.to(dtype), mask.to(dtype)
    offset = offset.to(position_dtype)

    input = F.pad(input, [0, 0, params.pad_w, params.pad_w, params.pad_h, params.pad_h])
    batch, padded_h, padded_w, _ = input.shape
    _, out_h, out_w, _ = offset.shape
    group, group_channels, points = params.group, params.group_channels, params.points

    ref = _reference_points(params, padded_h, padded_w, out_h, out_w, input.device, position_dtype)
    grid = _kernel_grid(params, padded_h, padded_w, input.device, position_dtype)
    spatial_norm = torch.tensor([padded_w, padded_h], device=input.device, dtype=position_dtype)
    spatial_norm = spatial_norm.reshape(1, 1, 1, 2).repeat(1, 1, 1, group * points)

    locations = (ref + grid * params.offset_scale).repeat(batch, 1, 1, 1, 1).flatten(3, 4)
    locations = locations + offset * params.offset_scale / spatial_norm
    sampling_grids = (2 * locations - 1).to(dtype)

    # [N, Hp, Wp, G*D] -> [N*G, D, Hp, Wp]
    input_ = (
        input.view(batch, padded_h * padded_w, group * group_channels)
        .transpose(1, 2)
        .reshape(batch * group, group_channels, padded_h, padded_w)
    )
    # [N, Ho, Wo, G*P*2] -> [N*G, Ho*Wo, P, 2]
    grids_ = sampling_grids.view(batch, out_h * out_w, group, points, 2).transpose(1, 2).flatten(0, 1)
    sampled = F.grid_sample(input_, grids_, mode="bilinear", padding_mode="zeros", align_corners=False)
    # [N, Ho, Wo, G*P] -> [N*G, 1, Ho*Wo, P]
    mask_ = mask.reshape(batch, out_h * out_w, group, points).transpose(1, 2).reshape(
        batch * group, 1, out_h * out_w, points
    )
    output = (sampled * mask_).sum(-1).view(batch, group * group_channels, out_h * out_w)
    return output.transpose(1, 2).reshape(batch, out_h, out_w, group * group_channels).contiguous().to(out_dtype)
