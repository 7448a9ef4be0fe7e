"""The Ascend C kernel's tiling, and a NumPy model of its loops that CI runs against the reference.

`plan()` is the tiling the loader hands the kernel (dcnv3_ascendc.asc takes
block_pixels and blocks from it). `forward()` and `backward()` walk the same
loops as the device code: cores take tiles round-robin; a tile is a run of
output pixels of one group; its offsets and masks arrive in one strided copy;
each in-bounds corner's group channels are one contiguous run copied GM -> UB;
accumulation is float32; output, grad_offset and grad_mask leave in one
strided copy per tile and grad_input is an atomic add per corner run. Global
memory is modelled by `GlobalMemory`, which checks every copy's bounds and
counts writes, so partitioning, tails, bounds and channel runs are tested on
CPU although the device code is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from impls.params import DCNv3Params
from impls.reference import bilinear_corners

# Ascend 910B3: 192 KB unified buffer per vector core, 40 vector cores (the plan CI tests;
# on a device the loader passes the core count torch_npu reports).
UB_BYTES = 192 * 1024
VECTOR_CORES = 40
# UB buffers and every burst of a DataCopyPad land on 32-byte boundaries.
UB_ALIGN_BYTES = 32
FLOAT_BYTES = 4
# Headroom the kernel's scalars and the framework keep in UB.
UB_RESERVED_BYTES = 8 * 1024


def aligned_floats(count: int) -> int:
    """Floats a run of `count` floats occupies in UB."""
    per_block = UB_ALIGN_BYTES // FLOAT_BYTES
    return math.ceil(count / per_block) * per_block


def _ub_floats(params: DCNv3Params, backward: bool) -> tuple[int, int]:
    """(floats per tile pixel, fixed floats) of UB: the kernel's InitBuffer sizes."""
    run = aligned_floats(params.group_channels)
    offsets = aligned_floats(2 * params.points)
    masks = aligned_floats(params.points)
    if not backward:
        # per pixel: accumulator, offsets, masks; fixed: the four corner runs
        return run + offsets + masks, 4 * run
    # per pixel: grad_output, offsets, masks, grad_offset, grad_mask;
    # fixed: four corner runs, value, d/dy, d/dx and the scaled gradient being added
    return run + 2 * offsets + 2 * masks, 8 * run


def ub_bytes(block_pixels: int, params: DCNv3Params, backward: bool) -> int:
    """UB one core holds for a tile of block_pixels pixels."""
    per_pixel, fixed = _ub_floats(params, backward)
    return (block_pixels * per_pixel + fixed) * FLOAT_BYTES


@dataclass(frozen=True)
class Plan:
    pixels: int  # N * Ho * Wo
    groups: int
    block_pixels: int
    blocks: int  # cores launched

    @property
    def tiles(self) -> int:
        return math.ceil(self.pixels / self.block_pixels) * self.groups

    def tile(self, index: int) -> tuple[int, int, int]:
        """(group, first pixel, pixel count) of a tile; the last tile of each group may be short."""
        group = index % self.groups
        first = (index // self.groups) * self.block_pixels
        return group, first, min(self.block_pixels, self.pixels - first)

    def tiles_of(self, block: int) -> range:
        """Tiles core `block` takes: round-robin over the launched cores."""
        return range(block, self.tiles, self.blocks)


def plan(batch: int, out_h: int, out_w: int, params: DCNv3Params, backward: bool = False,
         vector_cores: int = VECTOR_CORES, ub_capacity: int = UB_BYTES) -> Plan:
    """Tiles that fit UB, as large as possible while keeping every core's rounds full where the work allows."""
    pixels = batch * out_h * out_w
    per_pixel, fixed = _ub_floats(params, backward)
    fits = ((ub_capacity - UB_RESERVED_BYTES) // FLOAT_BYTES - fixed) // per_pixel
    if fits < 1:
        raise ValueError(
            f"group_channels={params.group_channels} with {params.points} points needs "
            f"{ub_bytes(1, params, backward)} bytes of UB for one pixel; "
            f"{ub_capacity - UB_RESERVED_BYTES} are available"
        )
    if pixels == 0:  # an empty batch: no tile, no launch (the kernel's host code returns at once)
        return Plan(pixels=0, groups=params.group, block_pixels=1, blocks=0)
    block_pixels = max(_balanced_block_pixels(pixels, params.group, vector_cores, fits), 1)
    tiles = math.ceil(pixels / block_pixels) * params.group
    return Plan(pixels=pixels, groups=params.group, block_pixels=block_pixels, blocks=min(tiles, vector_cores))


def core_efficiency(tiles: int, vector_cores: int) -> float:
    """Share of the cores' rounds that do work: 48 tiles on 40 cores take 2 rounds, 0.6; 16 tiles, 0.4."""
    return tiles / (math.ceil(tiles / vector_cores) * vector_cores)


def _balanced_block_pixels(pixels: int, groups: int, vector_cores: int, fits: int) -> int:
    """The largest tile that fits UB among those whose tile count keeps the cores' rounds fullest.

    Candidates split each group's pixels into 1, 2, ... pieces, up to four rounds
    of tiles per core beyond what UB already forces.
    """
    fewest_pieces = math.ceil(pixels / fits)
    most_pieces = min(pixels, fewest_pieces + 4 * math.ceil(vector_cores / groups))
    best, best_efficiency = None, -1.0
    for pieces in range(fewest_pieces, most_pieces + 1):
        block_pixels = math.ceil(pixels / pieces)
        efficiency = core_efficiency(math.ceil(pixels / block_pixels) * groups, vector_cores)
        if efficiency > best_efficiency + 1e-9:
            best, best_efficiency = block_pixels, efficiency
    return best


class GlobalMemory:
    """A flat float32 buffer whose copies check their bounds and count what they write."""

    def __init__(self, values: np.ndarray, name: str):
        self.values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        self.writes = np.zeros(self.values.size, dtype=np.int64)
        self.name = name

    def _span(self, start: int, count: int, length: int, stride: int) -> np.ndarray:
        """Indices of `count` bursts of `length` floats, `stride` floats apart, from `start`."""
        index = start + stride * np.arange(count)[:, None] + np.arange(length)[None, :]
        if start < 0 or index.max() >= self.values.size:
            raise IndexError(f"{self.name}: copy [{start}, {index.max()}] outside [0, {self.values.size})")
        return index

    def read(self, start: int, count: int, length: int, stride: int) -> np.ndarray:
        return self.values[self._span(start, count, length, stride)].copy()

    def write(self, start: int, count: int, length: int, stride: int, data: np.ndarray) -> None:
        index = self._span(start, count, length, stride)
        self.values[index] = data
        np.add.at(self.writes, index, 1)

    def atomic_add(self, start: int, data: np.ndarray) -> None:
        index = self._span(start, 1, data.size, 0)
        self.values[index] += data


def _position(params: DCNv3Params, ho: int, wo: int, point: int, dx, dy):
    """(y, x) in float32, as the kernel computes them, from the point index alone."""
    f = np.float32
    centre = (params.kernel_w // 2) * params.kernel_h + params.kernel_h // 2
    position = point + int(params.remove_center and point >= centre)
    i, j = divmod(position, params.kernel_h)
    ch, cw = params.window_centre
    scale = f(params.offset_scale)
    x = f(wo * params.stride_w - params.pad_w + cw) + f(i * params.dilation_w - cw) * scale + dx * scale
    y = f(ho * params.stride_h - params.pad_h + ch) + f(j * params.dilation_h - ch) * scale + dy * scale
    return f(y), f(x)


def _tile_inputs(offset_gm, mask_gm, params, first, count, group):
    """The tile's offsets [count, 2P] and masks [count, P]: one strided copy each."""
    points, groups = params.points, params.group
    offsets = offset_gm.read(first * groups * 2 * points + group * 2 * points, count, 2 * points, groups * 2 * points)
    masks = mask_gm.read(first * groups * points + group * points, count, points, groups * points)
    return offsets, masks


def forward(input: np.ndarray, offset: np.ndarray, mask: np.ndarray, params: DCNv3Params, tiling: Plan):
    """The forward kernel's loops; returns (output [N, Ho, Wo, C], the output GlobalMemory)."""
    batch, height, width, channels = input.shape
    _, out_h, out_w, _ = offset.shape
    runs, depth = params.group_channels, params.channels
    input_gm, offset_gm, mask_gm = GlobalMemory(input, "input"), GlobalMemory(offset, "offset"), GlobalMemory(mask, "mask")
    output_gm = GlobalMemory(np.zeros(batch * out_h * out_w * channels), "output")
    for block in range(tiling.blocks):
        for tile in tiling.tiles_of(block):
            group, first, count = tiling.tile(tile)
            offsets, masks = _tile_inputs(offset_gm, mask_gm, params, first, count, group)
            accumulator = np.zeros((count, runs), dtype=np.float32)
            for k in range(count):
                n, rest = divmod(first + k, out_h * out_w)
                ho, wo = divmod(rest, out_w)
                for p in range(params.points):
                    y, x = _position(params, ho, wo, p, offsets[k, 2 * p], offsets[k, 2 * p + 1])
                    for row, col, weight, _, _ in bilinear_corners(y, x, height, width, np.float32):
                        address = ((n * height + row) * width + col) * depth + group * runs
                        corner = input_gm.read(address, 1, runs, 0)[0]
                        accumulator[k] += np.float32(masks[k, p] * weight) * corner
            output_gm.write(first * depth + group * runs, count, runs, depth, accumulator)
    return output_gm.values.reshape(batch, out_h, out_w, channels), output_gm


def backward(input, offset, mask, grad_output, params: DCNv3Params, tiling: Plan):
    """The backward kernel's loops; returns ((grad_input, grad_offset, grad_mask), their GlobalMemory)."""
    batch, height, width, channels = input.shape
    _, out_h, out_w, _ = offset.shape
    runs, depth, points = params.group_channels, params.channels, params.points
    input_gm, offset_gm, mask_gm = GlobalMemory(input, "input"), GlobalMemory(offset, "offset"), GlobalMemory(mask, "mask")
    grad_output_gm = GlobalMemory(grad_output, "grad_output")
    grad_input_gm = GlobalMemory(np.zeros(input.size), "grad_input")
    grad_offset_gm = GlobalMemory(np.zeros(offset.size), "grad_offset")
    grad_mask_gm = GlobalMemory(np.zeros(mask.size), "grad_mask")
    scale = np.float32(params.offset_scale)
    for block in range(tiling.blocks):
        for tile in tiling.tiles_of(block):
            group, first, count = tiling.tile(tile)
            offsets, masks = _tile_inputs(offset_gm, mask_gm, params, first, count, group)
            upstream = grad_output_gm.read(first * depth + group * runs, count, runs, depth)
            grad_offsets = np.zeros((count, 2 * points), dtype=np.float32)
            grad_masks = np.zeros((count, points), dtype=np.float32)
            for k in range(count):
                n, rest = divmod(first + k, out_h * out_w)
                ho, wo = divmod(rest, out_w)
                for p in range(points):
                    y, x = _position(params, ho, wo, p, offsets[k, 2 * p], offsets[k, 2 * p + 1])
                    value = np.zeros(runs, dtype=np.float32)
                    d_dy = np.zeros(runs, dtype=np.float32)
                    d_dx = np.zeros(runs, dtype=np.float32)
                    for row, col, weight, weight_dy, weight_dx in bilinear_corners(y, x, height, width, np.float32):
                        address = ((n * height + row) * width + col) * depth + group * runs
                        corner = input_gm.read(address, 1, runs, 0)[0]
                        value += weight * corner
                        d_dy += weight_dy * corner
                        d_dx += weight_dx * corner
                        grad_input_gm.atomic_add(address, np.float32(masks[k, p] * weight) * upstream[k])
                    grad_masks[k, p] = upstream[k] @ value
                    grad_offsets[k, 2 * p] = scale * masks[k, p] * (upstream[k] @ d_dx)
                    grad_offsets[k, 2 * p + 1] = scale * masks[k, p] * (upstream[k] @ d_dy)
            grad_offset_gm.write(first * params.group * 2 * points + group * 2 * points, count, 2 * points,
                                 params.group * 2 * points, grad_offsets)
            grad_mask_gm.write(first * params.group * points + group * points, count, points,
                               params.group * points, grad_masks)
    grads = (grad_input_gm.values.reshape(input.shape), grad_offset_gm.values.reshape(offset.shape),
             grad_mask_gm.values.reshape(mask.shape))
    return grads, (grad_input_gm, grad_offset_gm, grad_mask_gm)
