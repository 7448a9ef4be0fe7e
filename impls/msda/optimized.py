"""MSDA in pure PyTorch as one fused gather: every sample's four bilinear corners become rows of one
`F.embedding_bag` (mode "sum", per-sample weights) over `value`, laid out [N, M, S', D] as its table with
every level zero-padded by one pixel on each side (S' = the sum of (H_l + 2) * (W_l + 2)).

The published core runs one `grid_sample` per level, materialises every sample [N*M, D, Lq, L*P] and
sums it in a second pass; here each (batch, query, head) is one bag of L*P*4 weighted rows, summed as
they are gathered, with no per-level loop. The padding makes a corner off the level read a zero, so a
sample is one index, its top-left corner (the other three are +1, +W_l+2 and +W_l+3), and no
[N, Lq, M, L, P, 4] masks are built; a sample outside the -1 / H / W lines points at a padding pixel
with attention weight 0.

Backward, written out rather than left to autograd. The value gradient is the gather transposed: the
samples sorted by their top-left row (int32 keys, a quarter of the corners), the samples sharing one
become, for each corner, a bag of the output gradients they were read into, summed by one embedding_bag
per corner over the output gradient, and index_add_ puts each bag's sum on the pixel that corner reads.
(embedding_bag's own backward, a sort of every corner and a serial-per-row scatter, took about 2.5x as
long; `unique_consecutive`'s data-dependent length is one host sync on an accelerator.) Each corner's
weight gradient <grad_output, value row> is embedding_bag's per-sample-weight backward; from it the
attention weight's gradient is the sample's bilinear read, and the location's that read's derivatives
along the level's width and height, times W_l and H_l (w = x * W_l - 0.5). float16 and bfloat16 compute
in float32 (the contract's accumulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from impls.grid_sample import compute_dtype
from impls.msda.contract import level_sizes, level_starts
from impls.msda.registry import register


class PaddedLevels:
    """The levels' sizes and where each starts in the padded table's S' rows of one (batch, head)."""

    def __init__(self, spatial_shapes):
        self.sizes = level_sizes(spatial_shapes)
        self.padded = [(height + 2, width + 2) for height, width in self.sizes]
        self.starts = level_starts(self.padded)
        self.length = sum(height * width for height, width in self.padded)

    def views(self, table):
        """Each level's [..., H_l + 2, W_l + 2, D] view of a [..., S', D] table."""
        return [table[..., start:start + height * width, :].unflatten(-2, (height, width))
                for start, (height, width) in zip(self.starts, self.padded)]

    def corner_steps(self, device):
        """[L, 1, 4] int64: a top-left row's distance to the four corners, per level (a padded row apart)."""
        return torch.tensor([(0, 1, width, width + 1) for _, width in self.padded], device=device).view(-1, 1, 4)


def pad_table(value, levels: PaddedLevels, border=0):
    """value [N, S, M, D] as the [N, M, S', D] table with a pixel of `border` around each level."""
    batch, _, heads, channels = value.shape
    table = value.new_empty(batch, heads, levels.length, channels)
    for level, start, (height, width) in zip(levels.views(table), level_starts(levels.sizes), levels.sizes):
        level[:, :, 1:-1, 1:-1].copy_(value[:, start:start + height * width].unflatten(1, (height, width))
                                      .permute(0, 3, 1, 2, 4))
        for edge in (level[:, :, 0], level[:, :, -1], level[:, :, 1:-1, 0], level[:, :, 1:-1, -1]):
            edge.fill_(border)
    return table


def value_rows(levels: PaddedLevels, value_shape, device):
    """[N*M*S'] int64: the row of value's [N*S*M, D] layout that each padded table row holds; N*S*M for
    the padding."""
    batch, length, heads, _ = value_shape
    rows = torch.arange(batch * length * heads, device=device).view(batch, length, heads, 1)
    return pad_table(rows, levels, border=rows.numel()).view(-1)


def top_left(levels: PaddedLevels, sampling_locations, attention_weights, index_dtype):
    """(rows [N, Lq, M, L, P], each sample's top-left corner in the [N*M*S', D] table; the fractions lh, lw;
    the attention weights, 0 for a sample outside the -1 / H / W lines; the level sides (H_l, W_l) [L, 1])."""
    batch, _, heads = sampling_locations.shape[:3]
    device, dtype = sampling_locations.device, sampling_locations.dtype
    heights, widths = (torch.tensor(side, device=device, dtype=dtype).view(-1, 1) for side in zip(*levels.sizes))
    x, y = sampling_locations.unbind(-1)
    w, h = x * widths - 0.5, y * heights - 0.5
    inside = (h > -1) & (w > -1) & (h < heights) & (w < widths)
    h0, w0 = h.floor(), w.floor()
    padded_widths = (widths + 2).to(index_dtype)
    # Per (batch, head), per level: where the level starts, plus one padding row and column.
    bases = (torch.arange(batch * heads, device=device, dtype=index_dtype).view(batch, 1, heads, 1, 1) * levels.length
             + torch.tensor(levels.starts, device=device, dtype=index_dtype).view(-1, 1))
    inner = torch.where(inside, (h0.to(index_dtype) + 1) * padded_widths + w0.to(index_dtype) + 1, 0)
    zero = torch.zeros((), device=device, dtype=dtype)
    return (bases + inner, torch.where(inside, h - h0, zero), torch.where(inside, w - w0, zero),
            torch.where(inside, attention_weights, zero), (heights, widths))


def corner_weights(lh, lw, weights, corners):
    """Write each sample's four corner weights (its bilinear weights times its attention weight) into the
    four tensors `corners` (top-left, top-right, bottom-left, bottom-right), shaped like lh."""
    top, bottom, left = (1 - lh) * weights, lh * weights, 1 - lw
    for corner, (row, column) in zip(corners, ((top, left), (top, lw), (bottom, left), (bottom, lw))):
        torch.mul(row, column, out=corner)
    return corners


def index_dtype(table_rows: int) -> torch.dtype:
    """int32 where every row fits (half the bytes of int64, and the cheapest sort)."""
    return torch.int32 if table_rows < 2**31 else torch.int64


class FusedGather(torch.autograd.Function):
    """The operator on float32 (or float64) value [N, S, M, D], sampling_locations and attention_weights."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations, attention_weights):
        batch, _, heads, channels = value.shape
        levels = PaddedLevels(spatial_shapes)
        table = pad_table(value, levels).view(-1, channels)
        rows, lh, lw, weights, sides = top_left(levels, sampling_locations, attention_weights,
                                                index_dtype(table.shape[0]))
        # A bag per (batch, query, head): its L*P samples' four corners.
        bags = (rows[..., 0, 0].numel(), rows.shape[-2] * rows.shape[-1] * 4)
        corner_rows = (rows.unsqueeze(-1) + levels.corner_steps(rows.device).to(rows.dtype)).reshape(bags)
        per_corner = lh.new_empty(*lh.shape, 4)
        corner_weights(lh, lw, weights, per_corner.unbind(-1))
        output = F.embedding_bag(corner_rows, table, per_sample_weights=per_corner.view(bags), mode="sum")
        ctx.save_for_backward(table, rows, corner_rows, lh, lw, weights)
        ctx.levels, ctx.sides, ctx.value_shape = levels, sides, value.shape
        return output.view(batch, sampling_locations.shape[1], heads * channels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        table, rows, corner_rows, lh, lw, weights = ctx.saved_tensors
        levels, (heights, widths) = ctx.levels, ctx.sides
        grad_bags = grad_output.reshape(corner_rows.shape[0], ctx.value_shape[-1])
        grad_value = grad_locations = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_value = transposed_gather(grad_bags, rows, lh, lw, weights, levels, ctx.value_shape)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # <grad_output, value row> per corner, the gradient of a per-sample weight, which does not
            # depend on the weight: the table is detached, so autograd runs only that half of
            # embedding_bag's backward.
            with torch.enable_grad():
                probe = torch.zeros(corner_rows.shape, dtype=table.dtype, device=table.device, requires_grad=True)
                output = F.embedding_bag(corner_rows, table, per_sample_weights=probe, mode="sum")
                read, = torch.autograd.grad(output, probe, grad_bags)
            # The four corners' reads: top-left, top-right, bottom-left, bottom-right.
            tl, tr, bl, br = read.view(*rows.shape, 4).unbind(-1)
            along_top, along_bottom = tr - tl, br - bl
            top, bottom = tl + lw * along_top, bl + lw * along_bottom
            # The sample's bilinear read is top + lh * (bottom - top).
            grad_weights = top + lh * (bottom - top)
            grad_lh = weights * (bottom - top)
            grad_lw = weights * (along_top + lh * (along_bottom - along_top))
            grad_locations = torch.stack((grad_lw * widths, grad_lh * heights), -1)
        return grad_value, None, grad_locations, grad_weights


def transposed_gather(grad_output, rows, lh, lw, weights, levels: PaddedLevels, value_shape):
    """The value gradient [N, S, M, D]: each pixel gets, per corner c, the sum over the samples whose corner
    c it is of their corner-c weight * grad_output[bag]."""
    keys, order = torch.sort(rows.reshape(-1))
    # Sorted by top-left row, the samples sharing one are a run: a bag per run, for each corner.
    top_lefts, counts = torch.unique_consecutive(keys, return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    bags = torch.div(order, rows.shape[-2] * rows.shape[-1], rounding_mode="floor")
    sorted_weights = corner_weights(*(t.reshape(-1).index_select(0, order) for t in (lh, lw, weights)),
                                    grad_output.new_empty(4, keys.numel()))
    boundaries = torch.tensor(levels.starts[1:], device=keys.device, dtype=keys.dtype)
    level = torch.bucketize(top_lefts % levels.length, boundaries, right=True)
    corners = top_lefts.long() + levels.corner_steps(keys.device).view(-1, 4)[level].T
    # Summed in value's own layout, the padding's reads into a scratch row past the end: no padded
    # gradient to crop. (int64: index_add_ on int32 indices takes a path about 4x as slow, torch 2.13 on CPU.)
    targets = value_rows(levels, value_shape, keys.device)[corners]
    grad_value = grad_output.new_zeros(math.prod(value_shape[:-1]) + 1, value_shape[-1])
    for corner_targets, weights_of_corner in zip(targets, sorted_weights):
        grad_value.index_add_(0, corner_targets, F.embedding_bag(bags, grad_output, offsets,
                                                                 per_sample_weights=weights_of_corner, mode="sum"))
    return grad_value[:-1].view(value_shape)


@register("optimized", priority=10)
def optimized(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Pure PyTorch: every corner of every level and point in one F.embedding_bag, its backward written out."""
    out_dtype = value.dtype
    dtype = compute_dtype(out_dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    return FusedGather.apply(value, spatial_shapes, sampling_locations, attention_weights).to(out_dtype)
