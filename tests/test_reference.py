"""The reference is the ground truth, so it is proven on its own terms: finite
differences for the backward, hand-computable cases for the forward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import impls
from impls import DCNv3Params
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.strategies import problems

reference = impls.get("reference")


def one_point(params, height, width, dx=0.0, dy=0.0, point=0, channels=None):
    """Input 0..HW-1 in raster order, every offset (dx, dy), mask one-hot at `point`."""
    channels = channels or params.channels
    input = torch.arange(height * width, dtype=torch.float64).reshape(1, height, width, 1).repeat(1, 1, 1, channels)
    out_h, out_w = params.output_size(height, width)
    offset = torch.tensor([dx, dy], dtype=torch.float64).repeat(1, out_h, out_w, params.group * params.points)
    mask = torch.zeros(1, out_h, out_w, params.group * params.points, dtype=torch.float64)
    mask[..., point] = 1.0
    return input, offset, mask


def test_one_by_one_kernel_with_zero_offset_is_the_identity():
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=1, group_channels=2)
    input, offset, mask = one_point(params, 4, 5)
    torch.testing.assert_close(reference(input, offset, mask, params), input, rtol=0, atol=0)


def test_offsets_are_x_first_and_shift_with_zeros_outside():
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=1, group_channels=1)
    image = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    shifted_right = torch.cat([image[:, 1:], torch.zeros(3, 1, dtype=torch.float64)], 1)
    shifted_down = torch.cat([image[1:], torch.zeros(1, 4, dtype=torch.float64)], 0)
    for (dx, dy), want in {(1.0, 0.0): shifted_right, (0.0, 1.0): shifted_down}.items():
        output = reference(*one_point(params, 3, 4, dx=dx, dy=dy), params)
        torch.testing.assert_close(output[0, ..., 0], want, rtol=0, atol=0)


def test_half_pixel_offset_averages_neighbours():
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=1, group_channels=1)
    output = reference(*one_point(params, 2, 3, dx=0.5), params)[0, ..., 0]
    torch.testing.assert_close(output, torch.tensor([[0.5, 1.5, 1.0], [3.5, 4.5, 2.5]], dtype=torch.float64))


@pytest.mark.parametrize("remove_center", [False, True])
def test_point_order_is_x_major(remove_center):
    """Point p samples kernel cell (i, j) = params.kernel_points()[p]: x-major, centre skipped."""
    params = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=1, remove_center=remove_center)
    height, width = 5, 6
    image = torch.arange(height * width, dtype=torch.float64).reshape(height, width)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
    for point, (i, j) in enumerate(params.kernel_points()):
        output = reference(*one_point(params, height, width, point=point), params)[0, ..., 0]
        torch.testing.assert_close(output, padded[j:j + height, i:i + width], rtol=0, atol=0)


def test_offset_scale_scales_the_kernel_grid_and_the_offsets():
    """With offset_scale s, the corner point (i, j) = (0, 0) of a 3x3 window sits at -s from its centre."""
    params = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=1, offset_scale=0.5)
    input, offset, mask = one_point(params, 4, 4, dx=1.0)
    output = reference(input, offset, mask, params)[0, ..., 0]
    # x = wo - 1 + 1 + (0 - 1) * 0.5 + 1 * 0.5 = wo ; y = ho - 0.5
    image = input[0, ..., 0]
    above = torch.cat([torch.zeros(1, 4, dtype=torch.float64), image[:-1]], 0)
    torch.testing.assert_close(output, 0.5 * (image + above))


@settings(max_examples=6)
@given(problem=problems(smooth=True))
def test_backward_passes_gradcheck(problem):
    input, offset, mask, _ = problem.tensors(torch.float64)
    leaves = [t.requires_grad_() for t in (input, offset, mask)]
    assert torch.autograd.gradcheck(lambda *xs: reference(*xs, problem.params), leaves, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", ["padding_order", "offset_pair_order", "colliding_input_gradient"])
def test_backward_passes_gradcheck_on_regressions(name):
    problem: Problem = REGRESSIONS[name]
    input, offset, mask, _ = problem.tensors(torch.float64)
    leaves = [t.requires_grad_() for t in (input, offset, mask)]
    assert torch.autograd.gradcheck(lambda *xs: reference(*xs, problem.params), leaves, eps=1e-6, atol=1e-5, fast_mode=True)


def test_input_gradient_is_bitwise_reproducible():
    """Published defect 4 (atomicAdd) makes CUDA's input gradient vary; the ground truth must not."""
    problem = REGRESSIONS["colliding_input_gradient"]
    input, offset, mask, grad_output = problem.tensors(torch.float32)

    def input_grad():
        leaf = input.clone().requires_grad_()
        reference(leaf, offset, mask, problem.params).backward(grad_output)
        return leaf.grad

    assert torch.equal(input_grad(), input_grad())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_computes_in_float64_and_casts_back(dtype):
    problem = REGRESSIONS["float64_positions"]
    input, offset, mask, _ = problem.tensors(dtype)
    output = reference(input, offset, mask, problem.params)
    exact = reference(input.double(), offset.double(), mask.double(), problem.params)
    assert output.dtype == dtype
    torch.testing.assert_close(output, exact.to(dtype), rtol=0, atol=0)
