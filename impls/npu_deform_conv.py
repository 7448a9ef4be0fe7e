"""DCNv3 on torch_npu's DCNv2 kernel, `torch_npu.npu_deformable_conv2d`, through impls/dcnv2_mapping.py.

On 910B-class chips it runs CANN's DeformableOffsets and a convolution, in
float32 (it casts half inputs up and does not cast back), so float32 is the
one dtype declared. Its backward (npu_deformable_conv2dbk, fed by the op's
second output, the sampled tensor) is torch_npu's autograd formula.

HF32. torch_npu runs float32 convolutions in HF32 (an 11-bit mantissa) unless
`torch.npu.conv.allow_hf32` is False: its default is True (Ascend/pytorch
LazyInitAclops.cpp sets ALLOW_CONV_HF32 to "1"), and op-plugin's own
deformable-conv test turns it off before comparing with a golden. That costs
about 1e-3 relative error, far over the float32 gate, so this implementation
runs forward and backward with HF32 off and gives the caller's setting back
after each.

DeformableOffsets has no binary kernel (op-plugin, aclops
DeformableConv2dKernelNpu.cpp: "don't support binary"): CANN compiles it for
every new shape, so the gate checks it on a bounded number of shapes.

Written from torch_npu's documentation and sources; run in CI on the emulated
NPU (tests/emulated_npu), never on a real one by this project.
"""

from __future__ import annotations

import contextlib

import torch

from impls import dcnv2_mapping
from impls.registry import register


def _requires(device: torch.device) -> str | None:
    import torch_npu  # the device layer has imported it by now, or reported why not

    if not hasattr(torch_npu, "npu_deformable_conv2d"):
        return f"torch_npu {getattr(torch_npu, '__version__', '?')} has no npu_deformable_conv2d"
    return None


@contextlib.contextmanager
def _hf32_off():
    switch = torch.npu.conv
    caller = switch.allow_hf32
    switch.allow_hf32 = False
    try:
        yield
    finally:
        switch.allow_hf32 = caller


def _deformable_conv(input, offset, mask, params):
    import torch_npu

    arguments = dcnv2_mapping.npu_arguments(input, offset, mask, params)
    arguments["input"] = arguments["input"].contiguous()
    # Positional, in the documented prototype's order: its first parameter is named `self`.
    output, _sampled = torch_npu.npu_deformable_conv2d(*arguments.values())
    return dcnv2_mapping.from_nchw(output)


class _WithoutHF32(torch.autograd.Function):
    """The mapping and torch_npu's kernel with their own graph, built and differentiated with HF32
    off: autograd runs the backward after the forward has returned, outside any scope around it."""

    @staticmethod
    def forward(ctx, input, offset, mask, params):
        leaves = [t.detach().requires_grad_() for t in (input, offset, mask)]
        with torch.enable_grad(), _hf32_off():
            output = _deformable_conv(*leaves, params)
        ctx.graph = (leaves, output)
        return output.detach()

    @staticmethod
    def backward(ctx, grad_output):
        leaves, output = ctx.graph
        # The inner graph lives as long as this node: a caller may run the outer backward again.
        with _hf32_off():
            grads = torch.autograd.grad(output, leaves, grad_output, retain_graph=True)
        return (*grads, None)


@register("npu_deform_conv", dtypes=(torch.float32,), device_types=("npu",), requires=_requires,
          compiles_per_shape=True)
def npu_deform_conv(input, offset, mask, params):
    """torch_npu.npu_deformable_conv2d with a depthwise weight of ones, via the DCNv2 mapping, HF32 off."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (input, offset, mask)):
        return _WithoutHF32.apply(input, offset, mask, params)
    with _hf32_off():
        return _deformable_conv(input, offset, mask, params)
