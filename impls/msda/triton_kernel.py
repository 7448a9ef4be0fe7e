"""MSDA's Triton kernel (impls/msda/triton_kernels.py) as the custom operators `msda_triton::forward` /
`backward`, with fake kernels and autograd from impls/msda/operators.py.

Where it runs is DCNv3's Triton kernel's rule (impls/triton_kernel): cuda when Triton imports; npu with
triton-ascend (never run on a real NPU by this project; CI runs it on the emulated NPU through the
interpreter); cpu only under `TRITON_INTERPRET=1`, for parity checks on small shapes, never picked by
`impl="auto"` nor timed there. float32, float16 and bfloat16, accumulated in float32.

No `from __future__ import annotations`: torch.library reads the operator schema from the annotations.
"""

from typing import Optional, Tuple

import torch

from impls import triton_kernel
from impls.msda.operators import register_fake_and_autograd
from impls.msda.registry import register


def _kernels():
    return triton_kernel.import_kernels("impls.msda.triton_kernels")


def unavailable_reason(device: torch.device) -> Optional[str]:
    reason = triton_kernel.unavailable_reason(device)
    if reason is None and isinstance(_kernels(), str):
        return _kernels()
    return reason


@torch.library.custom_op("msda_triton::forward", mutates_args=())
def forward_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
               sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    return _kernels().forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@torch.library.custom_op("msda_triton::backward", mutates_args=())
def backward_op(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels().backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights)


register_fake_and_autograd("msda_triton::forward", "msda_triton::backward")


@register("triton", dtypes=(torch.float32, torch.float16, torch.bfloat16), device_types=("cuda", "npu", "cpu"),
          requires=unavailable_reason, priority=30, interpreted=triton_kernel.interpreted)
def triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Triton kernels: a program per block of (batch, query) rows and head, float32 accumulation, atomic
    value gradient."""
    return forward_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
