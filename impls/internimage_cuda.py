"""InternImage's own compiled CUDA extension (`import DCNv3`, built by its ops_dcnv3/setup.py), when installed.

The autograd wrapper below mirrors InternImage's DCNv3Function without its
CUDA-only amp decorators (the contract's published defect 6) and is called
through the same adapter as any bring-your-own kernel. The extension
dispatches float64, float32 and float16 (no bfloat16), and adds the input
gradient with atomicAdd (not bitwise reproducible).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from impls import devices
from impls.external import with_apply_signature
from impls.registry import register


@functools.lru_cache(maxsize=None)
def _extension():
    """The DCNv3 extension module, or why it does not import."""
    try:
        import DCNv3
    except Exception as error:
        return f"InternImage's DCNv3 CUDA extension is not importable: {devices.describe(error)}"
    if getattr(DCNv3, "HARNESS_SHIM", False):
        return ("the importable DCNv3 is this harness's shim (compat/DCNv3), not InternImage's compiled "
                "extension: internimage_cuda measures only the latter")
    return DCNv3


class InternImageFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
        ctx.scalars = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                       group, group_channels, offset_scale)
        ctx.im2col_step, ctx.remove_center = im2col_step, remove_center
        ctx.save_for_backward(input, offset, mask)
        return _extension().dcnv3_forward(input, offset, mask, *ctx.scalars, im2col_step, remove_center)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        grads = _extension().dcnv3_backward(
            input, offset, mask, *ctx.scalars, grad_output.contiguous(), ctx.im2col_step, ctx.remove_center,
        )
        return (*grads, *([None] * 13))


def _requires(device: torch.device) -> str | None:
    extension = _extension()
    return extension if isinstance(extension, str) else None


_apply = with_apply_signature(InternImageFunction.apply)


@register("internimage_cuda", dtypes=(torch.float64, torch.float32, torch.float16), device_types=("cuda",),
          requires=_requires)
def internimage_cuda(input, offset, mask, params):
    """InternImage's compiled DCNv3 CUDA extension, in a DCNv3Function-style autograd wrapper."""
    return _apply(input, offset, mask, params)
