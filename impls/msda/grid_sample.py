"""The `F.grid_sample` fallback ports run today: Deformable DETR's `ms_deform_attn_core_pytorch`, the baseline.

One grid_sample per level over `value` split by level, bilinear, zeros outside,
align_corners=False on the grid `2*loc - 1` (the contract's pixel positions);
the attention-weighted sum over levels and points follows. float16 and
bfloat16 compute in float32 and cast the result back (the contract's
accumulation); float64 stays float64. Backward is autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impls.grid_sample import compute_dtype
from impls.msda.contract import level_sizes
from impls.msda.registry import register


@register("grid_sample", baseline=True)
def grid_sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Deformable DETR's Python core: one F.grid_sample per level."""
    out_dtype = value.dtype
    dtype = compute_dtype(out_dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = level_sizes(spatial_shapes)
    value_list = value.split([h * w for h, w in sizes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(sizes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        level_value = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, channels, height, width)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        level_grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * channels, queries)
    return output.transpose(1, 2).contiguous().to(out_dtype)
