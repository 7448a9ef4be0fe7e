"""The native CPU kernel as a torch.library operator: opcheck, gradcheck, compile, reproducibility, build failures."""

from __future__ import annotations

import threading

import pytest
import torch

import impls
from impls import cpu_kernel
from parity.regressions import REGRESSIONS

kernel = impls.get("cpu_kernel")
pytestmark = pytest.mark.skipif(
    not kernel.available("cpu"), reason=f"cpu_kernel unavailable: {kernel.unavailable_reason('cpu')}"
)


def operands(name, dtype, requires_grad=True):
    problem = REGRESSIONS[name]
    input, offset, mask, grad_output = problem.tensors(dtype)
    if requires_grad:
        for tensor in (input, offset, mask):
            tensor.requires_grad_()
    return problem.params, (input, offset, mask), grad_output


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["padding_order", "colliding_input_gradient", "declared_dtypes_nonsquare"])
def test_opcheck(name, dtype):
    params, tensors, _ = operands(name, dtype)
    args = (*tensors, *params.scalars())
    torch.library.opcheck(torch.ops.dcnv3_harness.dcnv3_forward.default, args)


@pytest.mark.parametrize("name", ["padding_order", "offset_pair_order", "colliding_input_gradient"])
def test_gradcheck_in_float64(name):
    params, tensors, _ = operands(name, torch.float64)
    assert torch.autograd.gradcheck(lambda *xs: kernel(*xs, params), tensors, eps=1e-6, atol=1e-5)


def test_input_gradient_is_bitwise_reproducible(several_threads):
    """Backward adds each fixed range of pixels into a buffer of its own, summed in order: no atomics."""
    params, tensors, grad_output = operands("colliding_input_gradient", torch.float32)
    first = torch.autograd.grad(kernel(*tensors, params), tensors[0], grad_output)[0]
    for _ in range(3):
        again = torch.autograd.grad(kernel(*tensors, params), tensors[0], grad_output)[0]
        assert torch.equal(first, again)


def test_reduced_precision_accumulates_in_float():
    params, tensors, _ = operands("colliding_input_gradient", torch.bfloat16, requires_grad=False)
    output = kernel(*tensors, params)
    exact = kernel(*(t.float() for t in tensors), params)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), exact, rtol=2**-8, atol=1e-6)


def test_a_failed_build_reports_the_compiler_error(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(cpu_kernel, "SOURCE", broken)
    monkeypatch.setattr(cpu_kernel, "NAME", "dcnv3_harness_cpu_broken")
    monkeypatch.setenv("DCNV3_BUILD_DIR", str(tmp_path / "build"))
    reason = cpu_kernel.build_error.__wrapped__()
    assert reason.startswith("the C++ kernel did not build in") and "error" in reason.lower()
    assert impls.get("grid_sample").available("cpu")


def test_an_extension_builds_while_another_ones_build_holds_its_lock(tmp_path, monkeypatch):
    """Two operators' kernels building at once from cold (pytest-xdist workers, CI's lanes): one's build
    lock must not make the other wait, then load a library that the build it waited on never made."""
    monkeypatch.setenv("DCNV3_BUILD_DIR", str(tmp_path / "build"))
    held = cpu_kernel.extension_directory("building_elsewhere")
    held.mkdir(parents=True)
    (held / "lock").touch()  # torch's FileBaton: held while the file exists
    source = tmp_path / "tiny.cpp"
    source.write_text('extern "C" int tiny() { return 1; }\n')
    outcome = []
    loading = threading.Thread(target=lambda: outcome.append(cpu_kernel.load_extension("tiny", source, False)),
                               daemon=True)
    loading.start()
    loading.join(timeout=120)
    assert outcome, "still waiting after 120 s, on another extension's build lock"
    assert outcome[0][1] is None, outcome[0][1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_outside_the_image_read_nothing(dtype):
    """Corners outside the image contribute exactly zero, even with an infinite input at the nearest pixel."""
    params = impls.DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=2, group_channels=16)
    input = torch.randn(1, 3, 4, 32, dtype=dtype)
    input[0, 0, 0] = float("inf")
    offset = torch.full((1, 3, 4, 4), -10.0, dtype=dtype)  # every point far above and left of the image
    mask = torch.rand(1, 3, 4, 2, dtype=dtype)
    tensors = [t.clone().requires_grad_() for t in (input, offset, mask)]
    output = kernel(*tensors, params)
    assert torch.equal(output, torch.zeros_like(output))
    gradients = torch.autograd.grad(output, tensors, torch.randn_like(output))
    for gradient in gradients:
        assert torch.equal(gradient, torch.zeros_like(gradient))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_image_without_a_finite_pixel_agrees_with_the_reference(dtype):
    """Missing corners read a finite pixel with weight 0; with none in the image, an appended pixel of zeros."""
    params = impls.DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=2, group_channels=16)
    input = torch.randn(2, 3, 4, 32, dtype=dtype)
    input[1, ..., 20] = float("inf")  # image 1: no pixel is finite in every channel
    input[0, 0, 0, 3] = float("nan")  # image 0: pixel 0 is not finite either
    offset = torch.rand(2, 3, 4, 4, dtype=dtype) - 0.5
    offset[:, :, 2:] = -10.0  # half the points wholly outside the image
    mask = torch.rand(2, 3, 4, 2, dtype=dtype)
    output = kernel(input, offset, mask, params)
    expected = impls.get("reference")(input, offset, mask, params)
    assert torch.equal(output[:, :, 2:], torch.zeros_like(output[:, :, 2:]))
    torch.testing.assert_close(output.float(), expected.float(), equal_nan=True, rtol=2**-7, atol=1e-2)
