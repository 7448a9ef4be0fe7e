"""The ground truth: the contract's formulas as explicit loops, in float64.

Loops run over batch, output pixels, groups and points; only the group's
channels are a vector (NumPy, float64). The backward is written from the
contract's gradient formulas, not taken by autograd through the loops, so
`torch.autograd.gradcheck` against finite differences proves it independently.
Slow by design: keep shapes small.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from impls.params import DCNv3Params
from impls.registry import register


def _sampling_position(params: DCNv3Params, ho: int, wo: int, displacement: tuple[int, int], dx: float, dy: float):
    """(y, x) of a point in unpadded input coordinates; Python floats are float64."""
    ch, cw = params.window_centre
    scale = params.offset_scale
    x = wo * params.stride_w - params.pad_w + cw + displacement[1] * scale + dx * scale
    y = ho * params.stride_h - params.pad_h + ch + displacement[0] * scale + dy * scale
    return y, x


def bilinear_corners(y: float, x: float, height: int, width: int):
    """The in-bounds bilinear corners of (y, x): (row, col, weight, d_weight/dy, d_weight/dx), in float64.

    Empty when the point lies on or beyond the -1 / H / W border lines.
    """
    if not (y > -1 and x > -1 and y < height and x < width):
        return []
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    candidates = (
        (y0, x0, hy * hx, -hx, -hy),
        (y0, x0 + 1, hy * lx, -lx, hy),
        (y0 + 1, x0, ly * hx, hx, -ly),
        (y0 + 1, x0 + 1, ly * lx, lx, ly),
    )
    return [c for c in candidates if 0 <= c[0] < height and 0 <= c[1] < width]


def _forward(image, offset, mask, params: DCNv3Params):
    batch, height, width, _ = image.shape
    _, out_h, out_w, _ = offset.shape
    group_channels, points = params.group_channels, params.points
    displacements = params.point_displacements()
    output = np.zeros((batch, out_h, out_w, params.channels))
    for n in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                for g in range(params.group):
                    channels = slice(g * group_channels, (g + 1) * group_channels)
                    acc = np.zeros(group_channels)
                    for p, displacement in enumerate(displacements):
                        k = g * points + p
                        dx, dy = offset[n, ho, wo, 2 * k], offset[n, ho, wo, 2 * k + 1]
                        y, x = _sampling_position(params, ho, wo, displacement, dx, dy)
                        for row, col, weight, _, _ in bilinear_corners(y, x, height, width):
                            acc += (mask[n, ho, wo, k] * weight) * image[n, row, col, channels]
                    output[n, ho, wo, channels] = acc
    return output


def _backward(image, offset, mask, grad_output, params: DCNv3Params):
    batch, height, width, _ = image.shape
    _, out_h, out_w, _ = offset.shape
    group_channels, points = params.group_channels, params.points
    displacements = params.point_displacements()
    grad_image = np.zeros_like(image)
    grad_offset = np.zeros_like(offset)
    grad_mask = np.zeros_like(mask)
    for n in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                for g in range(params.group):
                    channels = slice(g * group_channels, (g + 1) * group_channels)
                    upstream = grad_output[n, ho, wo, channels]
                    for p, displacement in enumerate(displacements):
                        k = g * points + p
                        dx, dy = offset[n, ho, wo, 2 * k], offset[n, ho, wo, 2 * k + 1]
                        y, x = _sampling_position(params, ho, wo, displacement, dx, dy)
                        weight_of_point = mask[n, ho, wo, k]
                        value = np.zeros(group_channels)
                        dvalue_dy = np.zeros(group_channels)
                        dvalue_dx = np.zeros(group_channels)
                        for row, col, weight, dweight_dy, dweight_dx in bilinear_corners(y, x, height, width):
                            pixel = image[n, row, col, channels]
                            value += weight * pixel
                            dvalue_dy += dweight_dy * pixel
                            dvalue_dx += dweight_dx * pixel
                            grad_image[n, row, col, channels] += (weight_of_point * weight) * upstream
                        grad_mask[n, ho, wo, k] = upstream @ value
                        scaled = params.offset_scale * weight_of_point
                        grad_offset[n, ho, wo, 2 * k] = scaled * (upstream @ dvalue_dx)
                        grad_offset[n, ho, wo, 2 * k + 1] = scaled * (upstream @ dvalue_dy)
    return grad_image, grad_offset, grad_mask


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def like(array: np.ndarray, tensor: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(device=tensor.device, dtype=tensor.dtype)


class _ReferenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, params):
        ctx.save_for_backward(input, offset, mask)
        ctx.params = params
        return like(_forward(to_numpy(input), to_numpy(offset), to_numpy(mask), params), input)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        grads = _backward(
            to_numpy(input), to_numpy(offset), to_numpy(mask), to_numpy(grad_output), ctx.params
        )
        return (*(like(g, t) for g, t in zip(grads, (input, offset, mask))), None)


@register("reference", priority=-100)
def reference(input, offset, mask, params):
    """Explicit float64 loops and an analytic backward: the ground truth."""
    return _ReferenceFunction.apply(input, offset, mask, params)
