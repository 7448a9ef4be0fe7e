"""DCNv3 on torchvision's DCNv2 kernel, `torchvision.ops.deform_conv2d`, through impls/dcnv2_mapping.py.

Available where torchvision's compiled operators load (CUDA machines with a
matching torchvision; PyPI has no CPU build of torchvision for this project's
CI machine, so there it reports why not). Declares float64 and float32: its
kernels compute in the input's dtype, and half precision would accumulate in
half, which DCNv3's contract does not allow.
"""

from __future__ import annotations

import functools

import torch

from impls import dcnv2_mapping, devices
from impls.registry import register


@functools.lru_cache(maxsize=None)
def _load_error() -> str | None:
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)

        torch.ops.torchvision.deform_conv2d
    except Exception as error:
        return f"torchvision's compiled deform_conv2d is not loadable: {devices.describe(error)}"
    return None


def _requires(device: torch.device) -> str | None:
    return _load_error()


@register("torchvision_deform", dtypes=(torch.float64, torch.float32), device_types=("cpu", "cuda"),
          requires=_requires)
def torchvision_deform(input, offset, mask, params):
    """torchvision.ops.deform_conv2d with a depthwise weight of ones, via the DCNv2 mapping."""
    from torchvision.ops import deform_conv2d

    return dcnv2_mapping.from_nchw(deform_conv2d(**dcnv2_mapping.torchvision_arguments(input, offset, mask, params)))
