"""MSDA's argument checks (../shared/MSDA.md, "Bad input"): a ValueError naming the argument, before any work.

The level sizes live in a small int64 tensor (`spatial_shapes`) that every
implementation reads on the host to split or index `value`; checking them
costs that one read, which the published Python core makes as well.
"""

from __future__ import annotations

from typing import Iterable

import torch

from impls.cli import dtype_name

ARGUMENTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
RANKS = {"value": 4, "spatial_shapes": 2, "level_start_index": 1, "sampling_locations": 6, "attention_weights": 5}
LAYOUTS = {"value": "(N, S, M, D)", "spatial_shapes": "(L, 2)", "level_start_index": "(L,)",
           "sampling_locations": "(N, Lq, M, L, P, 2)", "attention_weights": "(N, Lq, M, L, P)"}
INDEX_DTYPES = (torch.int64, torch.int32)


def level_sizes(spatial_shapes: torch.Tensor) -> list[tuple[int, int]]:
    """[(H_l, W_l), ...] as Python ints."""
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def level_starts(sizes: list[tuple[int, int]]) -> list[int]:
    """Where each level starts in S: the running sum of H_l*W_l, from 0."""
    starts, total = [], 0
    for h, w in sizes:
        starts.append(total)
        total += h * w
    return starts


def validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
             dtypes: Iterable[torch.dtype] | None = None, implementation: str = "") -> list[tuple[int, int]]:
    """Check the five arguments against each other per the contract; return the level sizes."""
    tensors = dict(zip(ARGUMENTS, (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)))
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != RANKS[name]:
            raise ValueError(f"{name} must have rank {RANKS[name]} {LAYOUTS[name]}, got shape {tuple(tensor.shape)}")
    dtype, device = value.dtype, value.device
    if not dtype.is_floating_point:
        raise ValueError(f"value must be floating point, got {dtype}")
    for name in ("sampling_locations", "attention_weights"):
        tensor = tensors[name]
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but value is on {device}")
        if tensor.dtype != dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but value has {dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        tensor = tensors[name]
        if tensor.dtype not in INDEX_DTYPES:
            raise ValueError(f"{name} must be an integer tensor (int64), got {tensor.dtype}")
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but value is on {device}")
    if dtypes is not None and dtype not in dtypes:
        who = f"{implementation} " if implementation else ""
        names = ", ".join(sorted(dtype_name(d) for d in dtypes))
        raise ValueError(f"value dtype {dtype} is not supported by {who}(supports {names})")

    batch, length, heads, channels = value.shape
    levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be (L, 2) of (H_l, W_l), got shape {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != levels:
        raise ValueError(f"level_start_index has {level_start_index.shape[0]} entries, spatial_shapes {levels} levels")
    locations, weights = sampling_locations.shape, attention_weights.shape
    if locations[-1] != 2:
        raise ValueError(f"sampling_locations' last dimension must be 2 (x, y), got {locations[-1]}")
    expected = {"N": batch, "M": heads, "L": levels}
    for axis, (letter, size) in zip((0, 2, 3), expected.items()):
        if locations[axis] != size:
            raise ValueError(f"sampling_locations {letter} is {locations[axis]}, expected {size} "
                             f"(from {'spatial_shapes' if letter == 'L' else 'value'})")
    if weights != locations[:-1]:
        raise ValueError(f"attention_weights shape {tuple(weights)} must be sampling_locations' without its last "
                         f"dimension, {tuple(locations[:-1])} (N, Lq, M, L, P)")

    sizes = level_sizes(spatial_shapes)
    if any(h <= 0 or w <= 0 for h, w in sizes):
        raise ValueError(f"spatial_shapes must hold positive level sizes, got {sizes}")
    total = sum(h * w for h, w in sizes)
    if length != total:
        raise ValueError(f"value has S={length} positions but spatial_shapes sums to sum(H_l*W_l) = {total}")
    if level_start_index.tolist() != level_starts(sizes):
        raise ValueError(f"level_start_index must be the running sum of H_l*W_l, {level_starts(sizes)}, "
                         f"got {level_start_index.tolist()}")
    return sizes
