"""MSDA on Ascend's own kernel: `mx_driving.multi_scale_deformable_attn` (DrivingSDK), where installed.

Its envelope is what DrivingSDK documents (docs/zh/api/context/multi_scale_deformable_attn.md):
embed_dims a multiple of 8 and at most 256, at most 8 heads, num_levels * num_points at most 64,
float32 or float16, Atlas A2 training chips (the 910B3 among them). Its Python wrapper
(mx_driving/ops/multi_scale_deformable_attn.py) raises a bare Exception on an empty tensor, so an
empty batch is outside it too. A case outside is "unsupported" in the gate, not wrong.

(x, y) or (y, x). That page called the last axis of sampling_locations "y, x" through 2024 and
"x, y" since January 2025 (DrivingSDK !874, "Optimize MSDA & MSDGrad"); releases of either age are
installed. The kernel (kernels/multi_scale_deformable_attn/op_kernel/msda.h,
ComputeLocation) scales the pair's first element by W_l (spatial_shapes[l][1]) and uses the second
as the row: (x, y), the contract's. The gate's `x_first` regression problem tells the two apart, so a
real host settles it on its first run.

float16: the wrapper's C++ (mx_driving/csrc/MultiScaleDeformableAttn.cpp) computes in float32 and
casts the output and gradients back; float64 is not accepted. The wrapper casts the index tensors to
int32 itself (`value_spatial_shapes.int()`). Its backward is once-differentiable.

Written from DrivingSDK's documentation and sources; run in CI on the emulated NPU
(tests/emulated_npu/mx_driving), never on a real one by this project.
"""

from __future__ import annotations

import torch

from impls.msda.registry import register

# DrivingSDK's documented limits.
CHANNEL_MULTIPLE, MAX_CHANNELS, MAX_HEADS, MAX_LEVELS_TIMES_POINTS = 8, 256, 8, 64


def _requires(device: torch.device) -> str | None:
    try:
        import mx_driving
    except ImportError as error:
        return f"mx_driving (Ascend DrivingSDK) is not installed: {error}"
    if not hasattr(mx_driving, "multi_scale_deformable_attn"):
        return f"mx_driving {getattr(mx_driving, '__version__', '?')} has no multi_scale_deformable_attn"
    return None


def envelope(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> str | None:
    """Which argument lies outside DrivingSDK's documented limits, or None."""
    _, _, heads, channels = value.shape
    levels, points = sampling_locations.shape[3], sampling_locations.shape[4]
    if channels % CHANNEL_MULTIPLE or channels > MAX_CHANNELS:
        return (f"value's embed_dims is {channels}; DrivingSDK documents a multiple of {CHANNEL_MULTIPLE} "
                f"and at most {MAX_CHANNELS}")
    if heads > MAX_HEADS:
        return f"value has {heads} heads; DrivingSDK documents at most {MAX_HEADS}"
    if levels * points > MAX_LEVELS_TIMES_POINTS:
        return (f"sampling_locations has {levels} levels x {points} points = {levels * points}; "
                f"DrivingSDK documents at most {MAX_LEVELS_TIMES_POINTS}")
    if value.numel() == 0 or attention_weights.numel() == 0:
        return "an empty value or attention_weights tensor, which mx_driving raises on"
    return None


@register("mx_driving", dtypes=(torch.float32, torch.float16), device_types=("npu",), requires=_requires,
          envelope=envelope)
def mx_driving(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Ascend DrivingSDK's mx_driving.multi_scale_deformable_attn, inside its documented limits."""
    import mx_driving

    return mx_driving.multi_scale_deformable_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                                  attention_weights)
