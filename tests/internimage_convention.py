"""InternImage's calling convention for its compiled `DCNv3` extension, written here from
ops_dcnv3/functions/dcnv3_func.py (InternImage's code itself is not in this repository):
`import DCNv3` and `import pkg_resources` at the top, the distribution's version read with
float(), `remove_center` passed only above version 1.0, torch.cuda.amp's custom_fwd /
custom_bwd, once_differentiable, and grad_output made contiguous for the backward.

    python tests/internimage_convention.py    # in an environment with the shim installed

checks the forward and all three gradients through it against the float64 reference and
prints them as JSON; exit status 1 when any differs by more than float64 rounding.
"""

import json
import sys

import DCNv3
import pkg_resources
import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.cuda.amp import custom_bwd, custom_fwd

dcn_version = float(pkg_resources.get_distribution("DCNv3").version)


class DCNv3Function(Function):
    @staticmethod
    @custom_fwd
    def forward(ctx, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step, remove_center):
        ctx.kernel_h, ctx.kernel_w, ctx.stride_h, ctx.stride_w = kernel_h, kernel_w, stride_h, stride_w
        ctx.pad_h, ctx.pad_w, ctx.dilation_h, ctx.dilation_w = pad_h, pad_w, dilation_h, dilation_w
        ctx.group, ctx.group_channels, ctx.offset_scale = group, group_channels, offset_scale
        ctx.im2col_step, ctx.remove_center = im2col_step, remove_center
        args = [input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, ctx.im2col_step]
        if remove_center or dcn_version > 1.0:
            args.append(remove_center)
        output = DCNv3.dcnv3_forward(*args)
        ctx.save_for_backward(input, offset, mask)
        return output

    @staticmethod
    @once_differentiable
    @custom_bwd
    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        args = [input, offset, mask, ctx.kernel_h, ctx.kernel_w, ctx.stride_h, ctx.stride_w, ctx.pad_h,
                ctx.pad_w, ctx.dilation_h, ctx.dilation_w, ctx.group, ctx.group_channels, ctx.offset_scale,
                grad_output.contiguous(), ctx.im2col_step]
        if ctx.remove_center or dcn_version > 1.0:
            args.append(ctx.remove_center)
        grad_input, grad_offset, grad_mask = DCNv3.dcnv3_backward(*args)
        return (grad_input, grad_offset, grad_mask,
                None, None, None, None, None, None, None, None, None, None, None, None, None)


def compare() -> dict:
    """Worst absolute difference from the reference, per problem and quantity, float64."""
    from parity.compare import differences, evaluate, expected
    from parity.regressions import REGRESSIONS

    from impls.external import with_apply_signature
    from impls.registry import Implementation

    port = Implementation("InternImage DCNv3Function", with_apply_signature(DCNv3Function.apply),
                          frozenset({torch.float64}), ("cpu",))
    worst = {}
    for name, problem in REGRESSIONS.items():
        actual = evaluate(port, problem, torch.float64, torch.device("cpu"))
        for quantity, truth in expected(problem, torch.float64).items():
            worst[f"{name} {quantity}"] = differences(actual[quantity], truth)[0]
    return worst


if __name__ == "__main__":
    results = {"dcn_version": dcn_version, "module": DCNv3.__file__, "max_abs_diff": compare()}
    print(json.dumps(results))
    sys.exit(0 if max(results["max_abs_diff"].values()) <= 1e-12 else 1)
