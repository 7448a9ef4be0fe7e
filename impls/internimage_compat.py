"""The two functions of InternImage's compiled `DCNv3` extension, computed by this harness.

InternImage's `ops_dcnv3/functions/dcnv3_func.py` does `import DCNv3` and calls

    DCNv3.dcnv3_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
                        remove_center) -> output
    DCNv3.dcnv3_backward(input, offset, mask, kernel_h, ..., offset_scale, grad_output, im2col_step,
                         remove_center) -> [grad_input, grad_offset, grad_mask]

(`remove_center` only where the DCNv3 distribution's version is above 1.0: the
older builds take one argument fewer, and so do these). `compat/DCNv3`
installs a module `DCNv3` that re-exports them, so that code runs unmodified
on any device the harness has an implementation for.

Each call runs the best implementation available on the tensors' device and
dtype (`impl="auto"`), or the one named by $DCNV3_IMPL, and says once per
device, dtype and implementation which one it is. The extension's backward
receives no autograd graph from the forward: a kernel with a backward of its
own (`Implementation.gradients`: cpu_kernel, triton, ascendc) is called
directly; for the others the backward runs the forward again and
differentiates it, one extra forward of the core per training step.
"""

from __future__ import annotations

import os
import sys

import torch

from impls.cli import dtype_name
from impls.params import DCNv3Params, validate
from impls.registry import Implementation, auto, get

IMPL_VARIABLE = "DCNV3_IMPL"
_announced: set[tuple[str, torch.dtype, str]] = set()


def _params(scalars, remove_center) -> DCNv3Params:
    *geometry, offset_scale = scalars
    return DCNv3Params(*geometry, offset_scale, bool(remove_center))


def _chosen(input: torch.Tensor, offset, mask, params: DCNv3Params) -> Implementation:
    """The implementation for these tensors, once they are validated for it, announced on its first use."""
    name = os.environ.get(IMPL_VARIABLE, "auto")
    if name == "auto":
        validate(input, offset, mask, params)
        # InternImage's DCNv3Function calls the backward with the same choice: never a forward-only one.
        impl, why = auto(input.device, input.dtype, backward=True), "the best available"
    else:
        try:
            impl = get(name)
        except KeyError as error:
            raise ValueError(f"{IMPL_VARIABLE}={name}: {error.args[0]}") from None
        why = f"{IMPL_VARIABLE}={name}"
        validate(input, offset, mask, params, impl.dtypes, impl.name)
        reason = impl.unavailable_reason(input.device)
        if reason is not None:
            raise ValueError(f"{IMPL_VARIABLE}={name}: {reason}")
    key = (input.device.type, input.dtype, impl.name)
    if key not in _announced:
        _announced.add(key)
        dtype = dtype_name(input.dtype)
        sys.stderr.write(f"DCNv3 (dcnv3-harness): {impl.name} on {input.device.type} {dtype} ({why})\n")
    return impl


def dcnv3_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
                  remove_center=False):
    """The output, [N, Ho, Wo, group * group_channels]; im2col_step never changes it."""
    params = _params((kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                      group, group_channels, offset_scale), remove_center)
    impl = _chosen(input, offset, mask, params)
    with torch.no_grad():
        return impl.fn(input, offset, mask, params)


def dcnv3_backward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                   dilation_h, dilation_w, group, group_channels, offset_scale, grad_output,
                   im2col_step, remove_center=False):
    """[grad_input, grad_offset, grad_mask] for grad_output, the gradient of the forward's output."""
    params = _params((kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                      group, group_channels, offset_scale), remove_center)
    impl = _chosen(input, offset, mask, params)
    expected = (*offset.shape[:3], input.shape[3])
    if not isinstance(grad_output, torch.Tensor) or tuple(grad_output.shape) != expected:
        shape = tuple(grad_output.shape) if isinstance(grad_output, torch.Tensor) else type(grad_output).__name__
        raise ValueError(f"grad_output must have the output's shape {expected}, got {shape}")
    if grad_output.dtype != input.dtype or grad_output.device != input.device:
        raise ValueError(f"grad_output must be {input.dtype} on {input.device} like input, "
                         f"got {grad_output.dtype} on {grad_output.device}")
    if impl.forward_only:
        raise ValueError(f"{IMPL_VARIABLE}={impl.name}: {impl.name} has no backward")
    if impl.gradients is not None:
        return list(impl.gradients(grad_output, input, offset, mask, params.scalars()))
    leaves = [t.detach().requires_grad_() for t in (input, offset, mask)]
    with torch.enable_grad():
        output = impl.fn(*leaves, params)
    return list(torch.autograd.grad(output, leaves, grad_output))
