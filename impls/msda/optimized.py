"""MSDA in pure PyTorch as one fused gather: every sample's four bilinear corners become rows of one
`F.embedding_bag` (mode "sum", per-sample weights) over `value`, laid out [N, M, S, D] as its table.

The published core runs one `grid_sample` per level, materialises every sample [N*M, D, Lq, L*P] and
sums it in a second pass; here each (batch, query, head) is one bag of L*P*4 weighted rows, summed as
they are gathered, with no per-level loop. The weights (attention x bilinear x inside) carry the
gradient to the locations and the attention weights. The value gradient is the same gather transposed:
the corners sorted by the row they read (int32 keys, the cheapest sort torch has), each row becomes a bag
of the output gradients that read it, summed by a second embedding_bag. embedding_bag's own backward
(a sort and a serial-per-row scatter) takes about 2.5x as long. float16 and bfloat16 compute in float32
(the contract's accumulation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impls.grid_sample import compute_dtype
from impls.msda.contract import level_sizes, level_starts
from impls.msda.registry import register


def corner_rows_and_weights(spatial_shapes, sampling_locations):
    """(rows, weights) of the four bilinear corners of every sample, [N, Lq, M, L, P, 4] each: the corner's
    index in S (0 where it is outside its level) and its bilinear weight (0 outside, and for a sample on or
    beyond the -1 / H / W lines)."""
    sizes = level_sizes(spatial_shapes)
    device, dtype = sampling_locations.device, sampling_locations.dtype
    heights, widths = (torch.tensor(side, device=device, dtype=dtype).view(-1, 1) for side in zip(*sizes))
    starts = torch.tensor(level_starts(sizes), device=device).view(-1, 1, 1)
    x, y = sampling_locations.unbind(-1)
    w, h = x * widths - 0.5, y * heights - 0.5
    inside = (h > -1) & (w > -1) & (h < heights) & (w < widths)
    h0, w0 = h.floor(), w.floor()
    lh, lw = h - h0, w - w0
    corner_h = torch.stack((h0, h0, h0 + 1, h0 + 1), -1)
    corner_w = torch.stack((w0, w0 + 1, w0, w0 + 1), -1)
    weights = torch.stack(((1 - lh) * (1 - lw), (1 - lh) * lw, lh * (1 - lw), lh * lw), -1)
    keep = (inside.unsqueeze(-1) & (corner_h >= 0) & (corner_w >= 0)
            & (corner_h < heights.unsqueeze(-1)) & (corner_w < widths.unsqueeze(-1)))
    rows = starts + corner_h.long() * widths.long().unsqueeze(-1) + corner_w.long()
    return torch.where(keep, rows, 0), torch.where(keep, weights, 0)


class CornerGather(torch.autograd.Function):
    """`F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")` with the table's gradient
    gathered rather than scattered."""

    @staticmethod
    def forward(ctx, table, rows, weights):
        ctx.save_for_backward(table, rows, weights)
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        table, rows, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_table = transposed_gather(grad_output, rows, weights, table.shape[0])
        if ctx.needs_input_grad[2]:
            # The table is detached, so autograd runs only the per-sample-weight half of the backward.
            with torch.enable_grad():
                weights = weights.detach().requires_grad_()
                output = F.embedding_bag(rows, table.detach(), per_sample_weights=weights, mode="sum")
                grad_weights, = torch.autograd.grad(output, weights, grad_output)
        return grad_table, None, grad_weights


def transposed_gather(grad_output, rows, weights, table_rows):
    """grad_table[r] = sum over the (bag, corner) pairs reading row r of weight * grad_output[bag]."""
    keys = rows.reshape(-1)
    keys = keys.int() if table_rows < 2**31 and grad_output.shape[0] * rows.shape[1] < 2**31 else keys
    keys, order = torch.sort(keys)
    # Where each row's run starts among the sorted keys (searchsorted, unlike bincount, needs no host sync).
    offsets = torch.searchsorted(keys, torch.arange(table_rows, device=keys.device, dtype=keys.dtype),
                                 out_int32=keys.dtype == torch.int32)
    bags = torch.div(order, rows.shape[1], rounding_mode="floor").to(keys.dtype)
    return F.embedding_bag(bags, grad_output, offsets, per_sample_weights=weights.reshape(-1)[order], mode="sum")


@register("optimized", priority=10)
def optimized(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Pure PyTorch: every corner of every level and point in one F.embedding_bag."""
    out_dtype = value.dtype
    dtype = compute_dtype(out_dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    batch, length, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    rows, bilinear = corner_rows_and_weights(spatial_shapes, sampling_locations)
    # Row of (n, m, s) in the [N*M*S, D] table.
    table_rows = rows + (torch.arange(batch * heads, device=rows.device) * length).view(batch, 1, heads, 1, 1, 1)
    per_sample = bilinear * attention_weights.unsqueeze(-1)
    table = value.transpose(1, 2).reshape(batch * heads * length, channels)
    # A bag per (batch, query, head) of four corners per level and point.
    bags, corners = batch * queries * heads, sampling_locations.shape[3] * sampling_locations.shape[4] * 4
    output = CornerGather.apply(table, table_rows.reshape(bags, corners), per_sample.reshape(bags, corners))
    return output.view(batch, queries, heads * channels).to(out_dtype)
