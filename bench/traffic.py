"""Bytes-moved model: the least traffic a DCNv3 or MSDA kernel must do, per problem and mode.

Each tensor is read or written once from device memory: forward reads the
operands (DCNv3's input, offset and mask; MSDA's value, locations and weights)
and writes output; backward reads grad_output and the operands and writes their
gradients. Of MSDA's value only the rows its samples read count as read: a
decoder's 300 queries read a small part of it (the benchmark's own inputs,
drawn as bench/cases.py draws them, say which rows); its gradient is written
whole. Achieved GB/s = these bytes / time.
It is a lower bound on real traffic (bilinear corners re-read from cache are
not counted), so a kernel near 100% is at the memory roofline.
"""

from __future__ import annotations

import functools
import math

import torch

from bench import instruments
from bench.shapes import MSDAShape, Shape

# Peak DRAM bandwidth, bytes/s, by device-name substring. Elsewhere (and on
# cpu) the fraction of peak is taken against the copy bandwidth measured in the
# same run.
KNOWN_PEAK_BANDWIDTH = {
    "H200": 4.8e12,   # NVIDIA H200 datasheet: 4.8 TB/s HBM3e
    "H100": 3.35e12,  # NVIDIA H100 SXM datasheet: 3.35 TB/s
    "A100": 2.0e12,   # NVIDIA A100 80GB SXM datasheet: 2,039 GB/s
    # Ascend 910B-class, HBM2e: the commonly quoted 1.6 TB/s; Huawei's own
    # figure could not be checked here, and the measured copy bandwidth is
    # reported beside it in every run.
    "Ascend910B": 1.6e12,
}


def tensor_elements(shape: Shape | MSDAShape) -> dict[str, int]:
    """Elements of each operand, and of the output (last)."""
    if isinstance(shape, MSDAShape):
        samples = shape.batch * shape.queries * shape.heads * len(shape.levels) * shape.points
        return {
            "value": shape.batch * shape.length * shape.heads * shape.channels,
            "sampling_locations": samples * 2,
            "attention_weights": samples,
            "output": shape.batch * shape.queries * shape.heads * shape.channels,
        }
    p = shape.params
    out_h, out_w = shape.output_size
    pixels_out = shape.batch * out_h * out_w
    return {
        "input": shape.batch * shape.height * shape.width * p.channels,
        "offset": pixels_out * p.group * p.points * 2,
        "mask": pixels_out * p.group * p.points,
        "output": pixels_out * p.channels,
    }


@functools.lru_cache(maxsize=None)
def value_elements_read(shape: MSDAShape) -> int:
    """Elements of value in the (batch, position, head) rows that the benchmark's inputs for shape sample."""
    from bench.cases import make_msda_inputs  # bench.cases imports the implementations
    from impls.msda.optimized import PaddedLevels, top_left, value_rows

    _, locations, _, _ = make_msda_inputs(shape, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    levels = PaddedLevels(torch.tensor(shape.levels))
    rows, _, _, weights, _ = top_left(levels, locations, torch.ones(locations.shape[:-1]), torch.int64)
    corners = (rows.unsqueeze(-1) + levels.corner_steps(rows.device))[weights > 0]
    value_shape = (shape.batch, shape.length, shape.heads, shape.channels)
    read = value_rows(levels, value_shape, rows.device)[corners]
    return torch.unique(read[read < math.prod(value_shape[:-1])]).numel() * shape.channels


def bytes_moved(shape: Shape | MSDAShape, mode: str, dtype: torch.dtype) -> int:
    n = tensor_elements(shape)
    written = sum(elements for name, elements in n.items() if name != "output")
    read = written - (n["value"] - value_elements_read(shape) if isinstance(shape, MSDAShape) else 0)
    forward = read + n["output"]
    backward = n["output"] + read + written  # read grad_output and operands, write their gradients
    elements = {"forward": forward, "backward": backward, "forward+backward": forward + backward}[mode]
    return elements * torch.empty((), dtype=dtype).element_size()


def known_peak_bandwidth(device_name: str) -> float | None:
    compact = device_name.replace(" ", "")
    return next((peak for key, peak in KNOWN_PEAK_BANDWIDTH.items() if key in compact), None)


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 10) -> float:
    """Bytes/s of a large device-to-device copy (read + write), best of `repeats`."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    timer = instruments.synchronised_timer(device)
    target.copy_(source)
    best_ms = min(instruments.elapsed_ms(timer, lambda: target.copy_(source)) for _ in range(repeats))
    return 2 * source.numel() * 4 / (best_ms / 1e3)
