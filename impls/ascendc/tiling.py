"""The Ascend C kernel's tiling: `plan()` is what the loader hands the kernel (dcnv3_ascendc.asc takes
block_pixels and blocks from it, and its host code refuses a tiling that would not fit).

A tile is a run of output pixels of one group, cores take tiles round-robin, and a tile's buffers
are the kernel's InitBuffer calls (`ub_bytes`). The kernel itself runs in CI on an emulated Ascend C
API (tests/emulated_ascendc) under this plan and under a small-core, small-buffer one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from impls.params import DCNv3Params

# Ascend 910B3: 192 KB unified buffer per vector core, 40 vector cores (the plan CI tests;
# on a device the loader passes the core count torch_npu reports).
UB_BYTES = 192 * 1024
VECTOR_CORES = 40
# UB buffers and every burst of a DataCopyPad land on 32-byte boundaries.
UB_ALIGN_BYTES = 32
FLOAT_BYTES = 4
# Headroom the kernel's scalars and the framework keep in UB.
UB_RESERVED_BYTES = 8 * 1024
# WholeReduceSum sums at most 64 float32 per repeat: a group's channels are reduced in runs of 64.
REDUCE_FLOATS = 64


def aligned_floats(count: int) -> int:
    """Floats a run of `count` floats occupies in UB."""
    per_block = UB_ALIGN_BYTES // FLOAT_BYTES
    return math.ceil(count / per_block) * per_block


def _ub_floats(params: DCNv3Params, backward: bool) -> tuple[int, int]:
    """(floats per tile pixel, fixed floats) of UB: the kernel's InitBuffer sizes (UbLayout in dcnv3_kernel.h)."""
    run = aligned_floats(params.group_channels)
    offsets = aligned_floats(2 * params.points)
    masks = aligned_floats(params.points)
    if not backward:
        # per pixel: accumulator, offsets, masks; fixed: two window slots of four runs
        return run + offsets + masks, 8 * run
    # per pixel: grad_output, offsets, masks, the points' dots, grad_offset, grad_mask; fixed: two window
    # slots and two grad_input slots of four runs, value with d/dy and d/dx, and their products (zero-padded
    # to whole runs of 64 where D > 64)
    chunks = math.ceil(params.group_channels / REDUCE_FLOATS)
    product = run if chunks == 1 else chunks * REDUCE_FLOATS
    dots = aligned_floats(3 * chunks * params.points)
    return run + 2 * offsets + 2 * masks + dots, 19 * run + 3 * product


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
