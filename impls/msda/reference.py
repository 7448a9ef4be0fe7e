"""MSDA's ground truth: the contract's formulas as explicit loops, in float64.

Loops run over batch, queries, heads, levels and points; only a head's D
channels are a vector (NumPy). The backward is written from the contract
(location gradient = d/dw * W_l and d/dh * H_l), not taken by autograd, so
gradcheck against finite differences proves it independently. Slow by design.
"""

from __future__ import annotations

import numpy as np
import torch

from impls.msda.contract import level_sizes, level_starts
from impls.msda.registry import register
from impls.reference import bilinear_corners, like, to_numpy


def _samples(locations, sizes, starts, n, q, m):
    """Per level and point of one query and head: (l, p, corners), corners as bilinear_corners gives them with
    the row replaced by its index in S."""
    for l, ((height, width), start) in enumerate(zip(sizes, starts)):
        for p in range(locations.shape[4]):
            x, y = locations[n, q, m, l, p]
            # Normalised 0..1 across the level's outer edges -> pixel centres at integers.
            h, w = y * height - 0.5, x * width - 0.5
            corners = [(start + r * width + c, weight, d_dh, d_dw)
                       for r, c, weight, d_dh, d_dw in bilinear_corners(h, w, height, width)]
            yield l, p, height, width, corners


def _forward(value, sizes, locations, weights):
    batch, _, heads, channels = value.shape
    queries = locations.shape[1]
    starts = level_starts(sizes)
    output = np.zeros((batch, queries, heads, channels))
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                for l, p, _, _, corners in _samples(locations, sizes, starts, n, q, m):
                    for row, weight, _, _ in corners:
                        output[n, q, m] += (weights[n, q, m, l, p] * weight) * value[n, row, m]
    return output.reshape(batch, queries, heads * channels)


def _backward(value, sizes, locations, weights, grad_output):
    batch, _, heads, channels = value.shape
    queries = locations.shape[1]
    starts = level_starts(sizes)
    upstream_all = grad_output.reshape(batch, queries, heads, channels)
    grad_value, grad_locations, grad_weights = np.zeros_like(value), np.zeros_like(locations), np.zeros_like(weights)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                upstream = upstream_all[n, q, m]
                for l, p, height, width, corners in _samples(locations, sizes, starts, n, q, m):
                    sample, d_dh, d_dw = np.zeros(channels), np.zeros(channels), np.zeros(channels)
                    attention = weights[n, q, m, l, p]
                    for row, weight, dweight_dh, dweight_dw in corners:
                        pixel = value[n, row, m]
                        sample += weight * pixel
                        d_dh += dweight_dh * pixel
                        d_dw += dweight_dw * pixel
                        grad_value[n, row, m] += (attention * weight) * upstream
                    grad_weights[n, q, m, l, p] = upstream @ sample
                    grad_locations[n, q, m, l, p] = (attention * width * (upstream @ d_dw),
                                                     attention * height * (upstream @ d_dh))
    return grad_value, grad_locations, grad_weights


class _ReferenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, sampling_locations, attention_weights):
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        ctx.sizes = level_sizes(spatial_shapes)
        output = _forward(to_numpy(value), ctx.sizes, to_numpy(sampling_locations), to_numpy(attention_weights))
        return like(output, value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, locations, weights = ctx.saved_tensors
        grads = _backward(to_numpy(value), ctx.sizes, to_numpy(locations), to_numpy(weights), to_numpy(grad_output))
        grad_value, grad_locations, grad_weights = (like(g, t) for g, t in zip(grads, (value, locations, weights)))
        return grad_value, None, grad_locations, grad_weights


@register("reference", priority=-100)
def reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Explicit float64 loops and an analytic backward: the ground truth."""
    return _ReferenceFunction.apply(value, spatial_shapes, sampling_locations, attention_weights)
