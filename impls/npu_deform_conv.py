"""DCNv3 on torch_npu's DCNv2 kernel, `torch_npu.npu_deformable_conv2d`, through impls/dcnv2_mapping.py.

On 910B-class chips it runs CANN's DeformableOffsets and a convolution, in
float32 (it casts half inputs up and does not cast back), so float32 is the
one dtype declared. Its backward (npu_deformable_conv2dbk, fed by the op's
second output, the sampled tensor) is torch_npu's autograd formula.
Written from torch_npu's documentation and mmcv's use of it; not run by this
project (no NPU here).
"""

from __future__ import annotations

import torch

from impls import dcnv2_mapping
from impls.registry import register


def _requires(device: torch.device) -> str | None:
    import torch_npu  # the device layer has imported it by now, or reported why not

    if not hasattr(torch_npu, "npu_deformable_conv2d"):
        return f"torch_npu {getattr(torch_npu, '__version__', '?')} has no npu_deformable_conv2d"
    return None


@register("npu_deform_conv", dtypes=(torch.float32,), device_types=("npu",), requires=_requires)
def npu_deform_conv(input, offset, mask, params):
    """torch_npu.npu_deformable_conv2d with a depthwise weight of ones, via the DCNv2 mapping."""
    import torch_npu

    arguments = dcnv2_mapping.npu_arguments(input, offset, mask, params)
    arguments["input"] = arguments["input"].contiguous()
    # Positional, in the documented prototype's order: its first parameter is named `self`.
    output, _sampled = torch_npu.npu_deformable_conv2d(*arguments.values())
    return dcnv2_mapping.from_nchw(output)
