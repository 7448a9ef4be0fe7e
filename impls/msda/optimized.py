"""MSDA in pure PyTorch as one fused gather: every sample's four bilinear corners become rows of one
`F.embedding_bag` (mode "sum", per-sample weights) over `value`, laid out [N, M, S, D] as its table.

The published core runs one `grid_sample` per level, materialises every sample [N*M, D, Lq, L*P] and
sums it in a second pass; here each (batch, query, head) is one bag of L*P*4 weighted rows, summed as
they are gathered, with no per-level loop.

Backward, written out rather than left to autograd (whose graph of the corner arithmetic held a dozen
[N, Lq, M, L, P, 4] tensors). The value gradient is the same gather transposed: the corners sorted by
the row they read (int32 keys, the cheapest sort torch has), each row becomes a bag of the output
gradients that read it, summed by a second embedding_bag (embedding_bag's own backward, a sort and a
serial-per-row scatter, takes about 2.5x as long). Each corner's weight gradient <grad_output, value row>
is embedding_bag's per-sample-weight backward; from it the attention weight's gradient is its sum
against the bilinear weights, and the location's the bilinear weights' derivatives along the level's
width and height, times W_l and H_l (w = x * W_l - 0.5). float16 and bfloat16 compute in float32 (the
contract's accumulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impls.grid_sample import compute_dtype
from impls.msda.contract import level_sizes, level_starts
from impls.msda.registry import register


def corners(spatial_shapes, sampling_locations):
    """Every sample's four bilinear corners (top-left, top-right, bottom-left, bottom-right): (rows [N, Lq,
    M, L, P, 4], the corner's index in S, 0 where it is not read; kept, where it is read: inside the level,
    for a sample inside the -1 / H / W lines; the fractions lh and lw [N, Lq, M, L, P]; the level sides
    (H_l, W_l) broadcastable to them)."""
    sizes = level_sizes(spatial_shapes)
    device, dtype = sampling_locations.device, sampling_locations.dtype
    heights, widths = (torch.tensor(side, device=device, dtype=dtype).view(-1, 1) for side in zip(*sizes))
    starts = torch.tensor(level_starts(sizes), device=device).view(-1, 1, 1)
    x, y = sampling_locations.unbind(-1)
    w, h = x * widths - 0.5, y * heights - 0.5
    inside = (h > -1) & (w > -1) & (h < heights) & (w < widths)
    h0, w0 = h.floor(), w.floor()
    corner_h = torch.stack((h0, h0, h0 + 1, h0 + 1), -1)
    corner_w = torch.stack((w0, w0 + 1, w0, w0 + 1), -1)
    kept = (inside.unsqueeze(-1) & (corner_h >= 0) & (corner_w >= 0)
            & (corner_h < heights.unsqueeze(-1)) & (corner_w < widths.unsqueeze(-1)))
    rows = starts + corner_h.long() * widths.long().unsqueeze(-1) + corner_w.long()
    return torch.where(kept, rows, 0), kept, h - h0, w - w0, (heights, widths)


def bilinear(lh, lw, kept):
    """The four corners' bilinear weights, 0 where a corner is not read."""
    return torch.stack(((1 - lh) * (1 - lw), (1 - lh) * lw, lh * (1 - lw), lh * lw), -1) * kept


class FusedGather(torch.autograd.Function):
    """The operator on float32 (or float64) value [N, S, M, D], sampling_locations and attention_weights."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations, attention_weights):
        batch, length, heads, channels = value.shape
        queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
        rows, kept, lh, lw, sides = corners(spatial_shapes, sampling_locations)
        # Row of (n, m, s) in the [N*M*S, D] table; a bag per (batch, query, head) of L*P*4 corners.
        rows = rows + (torch.arange(batch * heads, device=rows.device) * length).view(batch, 1, heads, 1, 1, 1)
        table = value.transpose(1, 2).reshape(batch * heads * length, channels)
        weights = bilinear(lh, lw, kept)
        per_corner = weights * attention_weights.unsqueeze(-1)
        bags = (batch * queries * heads, levels * points * 4)
        output = F.embedding_bag(rows.reshape(bags), table, per_sample_weights=per_corner.reshape(bags), mode="sum")
        ctx.save_for_backward(table, rows, kept, lh, lw, weights, per_corner, attention_weights)
        ctx.sides, ctx.value_shape = sides, value.shape
        return output.view(batch, queries, heads * channels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        table, rows, kept, lh, lw, weights, per_corner, attention_weights = ctx.saved_tensors
        batch, length, heads, channels = ctx.value_shape
        bags = (rows[..., 0, 0, 0].numel(), rows.shape[-3] * rows.shape[-2] * 4)
        grad_bags = grad_output.reshape(bags[0], channels)
        grad_value = grad_locations = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_table = transposed_gather(grad_bags, rows.reshape(bags), per_corner.reshape(bags), table.shape[0])
            grad_value = grad_table.view(batch, heads, length, channels).transpose(1, 2)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # <grad_output, value row> per corner: the table is detached, so autograd runs only the
            # per-sample-weight half of embedding_bag's backward.
            with torch.enable_grad():
                probe = per_corner.reshape(bags).detach().requires_grad_()
                output = F.embedding_bag(rows.reshape(bags), table, per_sample_weights=probe, mode="sum")
                read, = torch.autograd.grad(output, probe, grad_bags)
            read = read.view(rows.shape)
            grad_weights = (read * weights).sum(-1)
            g = read * kept * attention_weights.unsqueeze(-1)
            top_left, top_right, bottom_left, bottom_right = g.unbind(-1)
            grad_lh = (1 - lw) * (bottom_left - top_left) + lw * (bottom_right - top_right)
            grad_lw = (1 - lh) * (top_right - top_left) + lh * (bottom_right - bottom_left)
            heights, widths = ctx.sides
            grad_locations = torch.stack((grad_lw * widths, grad_lh * heights), -1)
        return grad_value, None, grad_locations, grad_weights


def transposed_gather(grad_output, rows, weights, table_rows):
    """grad_table[r] = sum over the (bag, corner) pairs reading row r of weight * grad_output[bag]."""
    keys = rows.reshape(-1)
    keys = keys.int() if table_rows < 2**31 and grad_output.shape[0] * rows.shape[1] < 2**31 else keys
    keys, order = torch.sort(keys)
    # Where each row's run starts among the sorted keys (searchsorted, unlike bincount, needs no host sync).
    offsets = torch.searchsorted(keys, torch.arange(table_rows, device=keys.device, dtype=keys.dtype),
                                 out_int32=keys.dtype == torch.int32)
    bags = torch.div(order.to(keys.dtype), rows.shape[1], rounding_mode="floor")
    return F.embedding_bag(bags, grad_output, offsets, per_sample_weights=weights.reshape(-1)[order], mode="sum")


@register("optimized", priority=10)
def optimized(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Pure PyTorch: every corner of every level and point in one F.embedding_bag, its backward written out."""
    out_dtype = value.dtype
    dtype = compute_dtype(out_dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    return FusedGather.apply(value, spatial_shapes, sampling_locations, attention_weights).to(out_dtype)
