"""mapping + DCNv2 semantics == DCNv3 reference, for the output and all three gradients, on CPU.

The DCNv2 kernels themselves (torchvision's compiled op, torch_npu's) do not
run here; tests/dcnv2_models.py models their documented semantics and layouts.
"""

from __future__ import annotations

import pytest
import torch
from dcnv2_models import npu_deformable_conv2d, torchvision_deform_conv2d
from hypothesis import given

from impls import dcnv2_mapping, devices, get
from impls.registry import Implementation
from parity import compare
from parity.regressions import REGRESSIONS
from parity.strategies import problems


def modelled(name, kernel_model, arguments):
    def run(input, offset, mask, params):
        output = kernel_model(*arguments(input, offset, mask, params).values())
        if isinstance(output, tuple):
            output = output[0]
        return dcnv2_mapping.from_nchw(output)

    return Implementation(name=name, fn=run, dtypes=frozenset({torch.float64}), device_types=("cpu",))


MODELS = {
    "torchvision": modelled("torchvision-model", torchvision_deform_conv2d, dcnv2_mapping.torchvision_arguments),
    "npu": modelled("npu-model", npu_deformable_conv2d, dcnv2_mapping.npu_arguments),
}


def assert_matches_reference(model, problem):
    compare.assert_matches_reference(model, problem, torch.float64)


@pytest.mark.parametrize("kernel", MODELS)
@pytest.mark.parametrize("name", REGRESSIONS)
def test_mapping_on_the_regression_problems(kernel, name):
    assert_matches_reference(MODELS[kernel], REGRESSIONS[name])


@pytest.mark.parametrize("kernel", MODELS)
@given(problem=problems(smooth=True))
def test_mapping_on_drawn_problems(kernel, problem):
    assert_matches_reference(MODELS[kernel], problem)


@pytest.mark.parametrize("kernel", MODELS)
@given(problem=problems())
def test_mapping_forward_and_input_mask_gradients_on_drawn_problems(kernel, problem):
    assert_matches_reference(MODELS[kernel], problem)


def test_point_order_is_the_one_that_matters():
    """A mapping that kept DCNv3's x-major order would be wrong on a non-square kernel: the test can fail."""
    problem = REGRESSIONS["declared_dtypes_nonsquare"]
    assert problem.params.kernel_h != problem.params.kernel_w

    def x_major(input, offset, mask, params):
        arguments = dcnv2_mapping.torchvision_arguments(input, offset, mask, params)
        n, _, out_h, out_w = arguments["mask"].shape
        kh, kw = params.kernel_h, params.kernel_w
        # Undo the reorder: treat row-major slots as if they were x-major.
        swap = lambda t, last: t.reshape(n, -1, kh, kw, *last).transpose(2, 3).reshape(t.shape)  # noqa: E731
        arguments["mask"] = swap(arguments["mask"], (out_h, out_w))
        arguments["offset"] = swap(arguments["offset"], (2, out_h, out_w))
        return dcnv2_mapping.from_nchw(torchvision_deform_conv2d(**arguments))

    wrong = Implementation(name="x-major", fn=x_major, dtypes=frozenset({torch.float64}), device_types=("cpu",))
    with pytest.raises(AssertionError):
        assert_matches_reference(wrong, problem)


def test_npu_arguments_follow_the_documented_prototype():
    problem = REGRESSIONS["padding_order"]
    input, offset, mask, _ = problem.tensors(torch.float32)
    p = problem.params
    arguments = dcnv2_mapping.npu_arguments(input, offset, mask, p)
    assert list(arguments) == ["input", "weight", "offset", "bias", "kernel_size", "stride", "padding",
                               "dilation", "groups", "deformable_groups", "modulated"]
    out_h, out_w = problem.output_size
    assert arguments["offset"].shape == (problem.batch, 3 * p.group * p.kernel_h * p.kernel_w, out_h, out_w)
    assert arguments["kernel_size"] == [p.kernel_h, p.kernel_w]
    assert arguments["padding"] == [p.pad_h, p.pad_h, p.pad_w, p.pad_w]
    assert arguments["stride"][:2] == [1, 1] and arguments["dilation"][:2] == [1, 1]
    assert arguments["weight"].shape == (p.channels, 1, p.kernel_h, p.kernel_w)


def test_npu_deform_conv_needs_an_npu():
    absent = devices.unavailable_reason("npu")
    if absent is None:
        pytest.skip("an NPU is present: npu_deform_conv takes part in parity there")
    assert get("npu_deform_conv").unavailable_reason("npu") == absent


def test_torchvision_deform_says_why_its_ops_do_not_load():
    reason = get("torchvision_deform").unavailable_reason("cpu")
    if reason is None:
        pytest.skip("torchvision's compiled ops load here: torchvision_deform takes part in parity")
    assert reason.startswith("torchvision's compiled deform_conv2d is not loadable")
