"""MSDA forward and backward as Triton kernels; imported only once Triton is known to load.

Motivation. The published core runs one `grid_sample` per level on an [N*M, D, H, W] copy of value,
materialises every sample [N*M, D, Lq, L*P] and reduces it in a second pass. Here a program owns a block
of (batch, query) rows of one head: per level and point it loads the location and the attention weight
(one scalar per row) and, at each of the four corners, the head's D channels as one contiguous vector
of value's [N, S, M, D] layout, accumulating in float32 in registers. Nothing but the output is written.

Backward. The same walk recomputes each sample and its derivatives along the level's width and height
from the four corners, reduces them over the channels against grad_output (grad_attention_weights and
grad_sampling_locations: one writer per element, no atomics; the location's derivative scaled by W_l and
H_l, since w = x * W_l - 0.5) and scatters `weight * corner weight * grad_output` into the value
gradient with float32 `atomic_add`: any query may read any pixel. grad_value is therefore not bitwise
reproducible run to run (as Deformable DETR's CUDA kernel); the output and the other two gradients are.

Scheduling and addressing follow DCNv3's Triton kernel (impls/triton_kernel/kernels.py): a grid of
programs striding over the tiles (one program per vector core on Ascend), and addresses formed only
from corners clamped into their level (`_corner`), for triton-ascend's masked loads.
"""

import torch
import triton
import triton.language as tl

from impls.triton_kernel.kernels import _corner, _programs, _stored, launch_config


@triton.jit
def _rows_of(tile, rows, queries, length, HEADS: tl.constexpr, CHANNELS: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """(head, (batch, query) rows in int64 clamped to the last, in range, where each row's batch and head
    start in value) of a tile; heads run fastest."""
    head = tile % HEADS
    row = (tile // HEADS) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    in_range = row < rows
    row = tl.minimum(row, rows - 1)
    return head, row, in_range, (row // queries) * length * HEADS * CHANNELS + head * CHANNELS


@triton.jit
def _level(shapes_ptr, starts_ptr, level):
    """(H_l, W_l as float32, W_l, S offset of the level) from the index tensors."""
    height = tl.load(shapes_ptr + 2 * level).to(tl.int64)
    width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int64)
    start = tl.load(starts_ptr + level).to(tl.int64)
    return height.to(tl.float32), width.to(tl.float32), height, width, start


@triton.jit
def _sample(location_ptr, weight_ptr, sample, in_range, height_f, width_f):
    """A sample's attention weight, inside flag, floor corner and bilinear fractions; the contract's
    w = x * W_l - 0.5, h = y * H_l - 0.5, and nothing on or beyond the -1 / H_l / W_l lines."""
    x = tl.load(location_ptr + 2 * sample, mask=in_range, other=0.0).to(tl.float32)
    y = tl.load(location_ptr + 2 * sample + 1, mask=in_range, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + sample, mask=in_range, other=0.0).to(tl.float32)
    w = x * width_f - 0.5
    h = y * height_f - 0.5
    inside = in_range & (h > -1.0) & (w > -1.0) & (h < height_f) & (w < width_f)
    h_floor = tl.floor(h)
    w_floor = tl.floor(w)
    h0 = tl.where(inside, h_floor, 0.0).to(tl.int64)
    w0 = tl.where(inside, w_floor, 0.0).to(tl.int64)
    # Fractions of 0 outside, as DCNv3's `_sampling_point` returns them and for the same reason.
    return weight, inside, h0, w0, tl.where(inside, h - h_floor, 0.0), tl.where(inside, w - w_floor, 0.0)


@triton.jit
def msda_forward_kernel(
    value_ptr, shapes_ptr, starts_ptr, location_ptr, weight_ptr, output_ptr,
    rows, queries, length, tiles,
    HEADS: tl.constexpr, CHANNELS: tl.constexpr, LEVELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
):
    channel = tl.arange(0, BLOCK_CHANNELS)
    channel_ok = channel < CHANNELS
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        head, row, in_range, image = _rows_of(tile, rows, queries, length, HEADS, CHANNELS, BLOCK_ROWS)
        acc = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), dtype=tl.float32)
        for level in range(LEVELS):
            height_f, width_f, height, width, start = _level(shapes_ptr, starts_ptr, level)
            for p in range(POINTS):
                sample = ((row * HEADS + head) * LEVELS + level) * POINTS + p
                weight, inside, h0, w0, lh, lw = _sample(location_ptr, weight_ptr, sample, in_range, height_f, width_f)
                for corner in tl.static_range(4):
                    fy = lh if corner // 2 == 1 else 1.0 - lh
                    fx = lw if corner % 2 == 1 else 1.0 - lw
                    ok, r, c = _corner(h0 + corner // 2, w0 + corner % 2, inside, height, width)
                    address = image + (start + r * width + c) * (HEADS * CHANNELS)
                    value = tl.load(value_ptr + address[:, None] + channel[None, :],
                                    mask=ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
                    acc += tl.where(ok, weight * fy * fx, 0.0)[:, None] * value
        out = row[:, None] * (HEADS * CHANNELS) + head * CHANNELS + channel[None, :]
        tl.store(output_ptr + out, acc.to(output_ptr.dtype.element_ty), mask=in_range[:, None] & channel_ok[None, :])


@triton.jit
def msda_backward_kernel(
    value_ptr, shapes_ptr, starts_ptr, location_ptr, weight_ptr, grad_output_ptr,
    grad_value_ptr, grad_location_ptr, grad_weight_ptr,
    rows, queries, length, tiles,
    HEADS: tl.constexpr, CHANNELS: tl.constexpr, LEVELS: tl.constexpr, POINTS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
):
    """grad_value_ptr is a zeroed float32 buffer; the other two gradients are written in their dtype."""
    channel = tl.arange(0, BLOCK_CHANNELS)
    channel_ok = channel < CHANNELS
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        head, row, in_range, image = _rows_of(tile, rows, queries, length, HEADS, CHANNELS, BLOCK_ROWS)
        upstream = tl.load(grad_output_ptr + row[:, None] * (HEADS * CHANNELS) + head * CHANNELS + channel[None, :],
                           mask=in_range[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
        for level in range(LEVELS):
            height_f, width_f, height, width, start = _level(shapes_ptr, starts_ptr, level)
            for p in range(POINTS):
                sample = ((row * HEADS + head) * LEVELS + level) * POINTS + p
                weight, inside, h0, w0, lh, lw = _sample(location_ptr, weight_ptr, sample, in_range, height_f, width_f)
                sampled = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), dtype=tl.float32)
                d_sampled_dh = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), dtype=tl.float32)
                d_sampled_dw = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), dtype=tl.float32)
                for corner in tl.static_range(4):
                    ok, r, c = _corner(h0 + corner // 2, w0 + corner % 2, inside, height, width)
                    fy = lh if corner // 2 == 1 else 1.0 - lh
                    fx = lw if corner % 2 == 1 else 1.0 - lw
                    sign_y = 1.0 if corner // 2 == 1 else -1.0
                    sign_x = 1.0 if corner % 2 == 1 else -1.0
                    address = image + (start + r * width + c) * (HEADS * CHANNELS)
                    lanes = ok[:, None] & channel_ok[None, :]
                    value = tl.load(value_ptr + address[:, None] + channel[None, :], mask=lanes, other=0.0)
                    value = value.to(tl.float32)
                    sampled += (fy * fx)[:, None] * value
                    d_sampled_dh += (sign_y * fx)[:, None] * value
                    d_sampled_dw += (sign_x * fy)[:, None] * value
                    tl.atomic_add(grad_value_ptr + address[:, None] + channel[None, :],
                                  tl.where(lanes, (weight * fy * fx)[:, None] * upstream, 0.0), mask=lanes)
                tl.store(grad_weight_ptr + sample,
                         tl.sum(upstream * sampled, axis=1).to(grad_weight_ptr.dtype.element_ty), mask=in_range)
                grad_x = weight * width_f * tl.sum(upstream * d_sampled_dw, axis=1)
                grad_y = weight * height_f * tl.sum(upstream * d_sampled_dh, axis=1)
                tl.store(grad_location_ptr + 2 * sample, grad_x.to(grad_location_ptr.dtype.element_ty), mask=in_range)
                tl.store(grad_location_ptr + 2 * sample + 1, grad_y.to(grad_location_ptr.dtype.element_ty),
                         mask=in_range)


def _launch(kernel, tensors, value, locations, backward: bool) -> None:
    batch, length, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    rows = batch * queries
    # DCNv3's tile shapes: a head's D channels are the width its group's channels are there.
    config = launch_config(channels, backward)
    block_rows = config.pop("BLOCK_PIXELS")
    tiles = triton.cdiv(rows, block_rows) * heads
    if tiles == 0:
        return
    kernel[(_programs(tiles, value.device),)](
        *tensors, rows, queries, length, tiles,
        HEADS=heads, CHANNELS=channels, LEVELS=levels, POINTS=points, BLOCK_ROWS=block_rows, **config,
    )


def _contiguous(*tensors):
    return [t.contiguous() for t in tensors]


def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    value, shapes, starts, locations, weights = _contiguous(value, spatial_shapes, level_start_index,
                                                            sampling_locations, attention_weights)
    batch, queries, heads = locations.shape[:3]
    output = torch.empty(batch, queries, heads * value.shape[3], dtype=_stored(value.dtype), device=value.device)
    _launch(msda_forward_kernel, (value, shapes, starts, locations, weights, output), value, locations, False)
    return output.to(value.dtype)


def backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    value, shapes, starts, locations, weights, grad_output = _contiguous(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output)
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    grad_locations = torch.zeros_like(locations, dtype=_stored(locations.dtype))
    grad_weights = torch.zeros_like(weights, dtype=_stored(weights.dtype))
    tensors = (value, shapes, starts, locations, weights, grad_output, grad_value, grad_locations, grad_weights)
    _launch(msda_backward_kernel, tensors, value, locations, True)
    return grad_value.to(value.dtype), grad_locations.to(locations.dtype), grad_weights.to(weights.dtype)
