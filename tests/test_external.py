"""Bring your own kernel (--impl-module) and InternImage's compiled extension, with stand-ins on CPU."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest
import torch

import impls
from impls import external, internimage_cuda, registry
from parity import gate
from parity.regressions import REGRESSIONS

PORTS = '''
import torch
import impls
from impls import DCNv3Params


def _params(args):
    *leading, offset_scale, im2col_step, remove_center = args
    return DCNv3Params(*leading, offset_scale, remove_center)


class GoodPort(torch.autograd.Function):
    """A port that is right: grid_sample under the apply signature, through autograd."""

    @staticmethod
    def apply(input, offset, mask, *args):
        return impls.get("grid_sample")(input, offset, mask, _params(args))


def swapped_pair_port(input, offset, mask, *args):
    """The contract's defect 5: (dy, dx) read as (dx, dy)."""
    pairs = offset.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return impls.get("grid_sample")(input, pairs, mask, _params(args))


def crashing_port(input, offset, mask, *args):
    raise RuntimeError("no kernel image is available for execution on the device")
'''


@pytest.fixture
def ports(tmp_path, monkeypatch):
    (tmp_path / "my_ports.py").write_text(textwrap.dedent(PORTS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("GoodPort", "swapped_pair_port", "crashing_port"):
        registry.remove(name)
    sys.modules.pop("my_ports", None)


def gate_on(spec, capsys):
    name = spec.split(":")[1]
    status = gate.main(["--device", "cpu", "--impl-module", spec, "--impl", name,
                        "--dtype", "float32", "--examples", "4"])
    return status, capsys.readouterr()


def test_a_right_port_passes_the_gate(ports, capsys):
    status, out = gate_on("my_ports:GoodPort", capsys)
    assert status == 0, out.out + out.err
    assert "| GoodPort" in out.out


def test_a_port_with_a_published_defect_fails_the_gate(ports, capsys):
    status, out = gate_on("my_ports:swapped_pair_port", capsys)
    assert status == 1 and "FAIL" in out.out


def test_a_port_that_raises_fails_its_cases_with_the_error_shown(ports, capsys):
    status, out = gate_on("my_ports:crashing_port", capsys)
    assert status == 1
    assert ": RuntimeError: no kernel image is available" in out.out


@pytest.mark.parametrize("spec, message", [
    ("my_ports", "expected package.module:Name"),
    ("no_such_package.module:Name", "cannot import no_such_package.module"),
    ("my_ports:Missing", "has no attribute 'Missing'"),
])
def test_bad_specs_are_usage_errors(ports, capsys, spec, message):
    assert gate.main(["--device", "cpu", "--impl-module", spec]) == 2
    assert message in capsys.readouterr().err


def test_the_adapter_passes_dcnv3function_apply_order():
    seen = []
    run = external.with_apply_signature(lambda *args: seen.append(args))
    params = REGRESSIONS["float64_positions"].params
    run("input", "offset", "mask", params)
    assert seen == [("input", "offset", "mask", params.kernel_h, params.kernel_w, params.stride_h, params.stride_w,
                     params.pad_h, params.pad_w, params.dilation_h, params.dilation_w, params.group,
                     params.group_channels, params.offset_scale, external.IM2COL_STEP, params.remove_center)]


def test_internimage_cuda_says_why_without_its_extension():
    if not isinstance(internimage_cuda._extension(), str):
        pytest.skip("InternImage's DCNv3 extension is installed here")
    # The device check comes first where there is no GPU; the extension's own reason otherwise.
    assert "DCNv3 CUDA extension is not importable" in internimage_cuda._requires(torch.device("cuda"))


def test_internimage_wrapper_calls_the_extension_in_its_argument_order(monkeypatch):
    """A stand-in `DCNv3` module with the extension's two signatures, computed by grid_sample."""
    def params_of(scalars, remove_center):
        return impls.DCNv3Params(*scalars, remove_center)

    def dcnv3_forward(input, offset, mask, *rest):
        *scalars, im2col_step, remove_center = rest
        assert im2col_step == external.IM2COL_STEP
        return impls.get("grid_sample")(input, offset, mask, params_of(scalars, remove_center))

    def dcnv3_backward(input, offset, mask, *rest):
        *scalars, grad_output, im2col_step, remove_center = rest
        with torch.enable_grad():  # a real extension computes its gradients without autograd
            leaves = [t.detach().requires_grad_() for t in (input, offset, mask)]
            output = impls.get("grid_sample")(*leaves, params_of(scalars, remove_center))
            return torch.autograd.grad(output, leaves, grad_output)

    monkeypatch.setitem(sys.modules, "DCNv3", types.SimpleNamespace(
        dcnv3_forward=dcnv3_forward, dcnv3_backward=dcnv3_backward))
    internimage_cuda._extension.cache_clear()
    try:
        problem = REGRESSIONS["declared_dtypes_nonsquare"]
        input, offset, mask, grad_output = problem.tensors(torch.float64)
        leaves = [t.requires_grad_() for t in (input, offset, mask)]
        output = internimage_cuda.internimage_cuda.fn(*leaves, problem.params)
        got = torch.autograd.grad(output, leaves, grad_output)
        want_output = impls.get("grid_sample")(*leaves, problem.params)
        want = torch.autograd.grad(want_output, leaves, grad_output)
        torch.testing.assert_close(output, want_output, rtol=0, atol=0)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        internimage_cuda._extension.cache_clear()
