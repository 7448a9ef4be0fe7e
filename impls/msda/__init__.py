"""Multi-scale deformable attention (MSDeformAttn, ../shared/MSDA.md) implementations behind one interface.

    impls.msda.names()             -> registered implementation names
    impls.msda.get(name)(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    impls.msda.ms_deform_attn(...) -> drop-in for Deformable DETR's MSDeformAttnFunction.apply
"""

from __future__ import annotations

import torch

from impls.msda import cpu_kernel as _cpu_kernel  # noqa: F401  (registers; builds on first use)
from impls.msda import extensions as _extensions  # noqa: F401  (registers; imports on first use)
from impls.msda import grid_sample as _grid_sample  # noqa: F401  (registers)
from impls.msda import mx_driving as _mx_driving  # noqa: F401  (registers; imports on first use)
from impls.msda import optimized as _optimized  # noqa: F401  (registers)
from impls.msda import reference as _reference  # noqa: F401  (registers)
from impls.msda import triton_kernel as _triton_kernel  # noqa: F401  (registers; imports Triton on first use)
from impls.msda.contract import validate
from impls.msda.registry import IMPLEMENTATIONS, MSDA, auto, baseline, get, names, register

__all__ = ["IMPLEMENTATIONS", "MSDA", "baseline", "get", "ms_deform_attn", "names", "register", "validate"]


def ms_deform_attn(value: torch.Tensor, value_spatial_shapes: torch.Tensor, value_level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor, im2col_step: int,
                   impl: str = "auto") -> torch.Tensor:
    """`MSDeformAttnFunction.apply(...)`'s argument order; im2col_step never changes the result.

    impl="auto" picks the highest-priority implementation available on value's device for its dtype (one
    with a backward where a gradient is needed); any registered name forces that one."""
    if not isinstance(im2col_step, int) or im2col_step < 1:
        raise ValueError(f"im2col_step must be a positive int, got {im2col_step!r}")
    args = (value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights)
    if impl != "auto":
        return get(impl)(*args)
    validate(*args)
    return auto(value.device, value.dtype, MSDA.gradient_needed(args)).fn(*args)
