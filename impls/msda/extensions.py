"""MSDA plug-ins that appear by themselves where importable: Deformable DETR's compiled extension
(`import MultiScaleDeformableAttention`, built by its models/ops/setup.py and shipped the same way by
DINO, Mask2Former and ViT-Adapter) and mmcv's `MultiScaleDeformableAttnFunction`.

Both are CUDA kernels that dispatch float64 and float32 and add the value gradient with atomicAdd (not
bitwise reproducible: the gate's run-to-run spread shows it). They are called with Deformable DETR's
im2col_step of 64, which never changes the result.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch.autograd.function import once_differentiable

from impls import devices
from impls.external import MSDA_IM2COL_STEP, with_msda_apply_signature
from impls.msda.registry import register

CUDA_DTYPES = (torch.float64, torch.float32)


def _imported(module: str, attribute: str | None, what: str):
    """module (or its attribute), or the sentence saying why `what` does not import."""
    try:
        found = importlib.import_module(module)
        return found if attribute is None else getattr(found, attribute)
    except Exception as error:
        return f"{what} is not importable: {devices.describe(error)}"


@functools.lru_cache(maxsize=None)
def _deformable_detr():
    """The MultiScaleDeformableAttention extension module, or why it does not import."""
    return _imported("MultiScaleDeformableAttention", None, "Deformable DETR's MultiScaleDeformableAttention extension")


@functools.lru_cache(maxsize=None)
def _mmcv():
    """mmcv's MultiScaleDeformableAttnFunction, or why it does not import."""
    return _imported("mmcv.ops.multi_scale_deform_attn", "MultiScaleDeformableAttnFunction",
                     "mmcv's MultiScaleDeformableAttnFunction")


def _reason(found) -> str | None:
    return found if isinstance(found, str) else None


class DeformableDETRFunction(torch.autograd.Function):
    """Deformable DETR's MSDeformAttnFunction around its extension's forward and backward."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        ctx.im2col_step = im2col_step
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _deformable_detr().ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                                         attention_weights, im2col_step)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = _deformable_detr().ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(), ctx.im2col_step)
        return grad_value, None, None, grad_locations, grad_weights, None


_deformable_detr_apply = with_msda_apply_signature(DeformableDETRFunction.apply)


@register("deformable_detr_cuda", dtypes=CUDA_DTYPES, device_types=("cuda",),
          requires=lambda device: _reason(_deformable_detr()))
def deformable_detr_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Deformable DETR's compiled MultiScaleDeformableAttention CUDA extension."""
    return _deformable_detr_apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@register("mmcv", dtypes=CUDA_DTYPES, device_types=("cuda",), requires=lambda device: _reason(_mmcv()))
def mmcv(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """mmcv's MultiScaleDeformableAttnFunction (its compiled CUDA op)."""
    return _mmcv().apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         MSDA_IM2COL_STEP)
