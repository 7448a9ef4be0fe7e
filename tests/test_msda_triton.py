"""MSDA's Triton kernel as torch.library operators, on the CPU through Triton's interpreter.

Needs TRITON_INTERPRET=1 before the kernels are first imported (`nox -s tests` sets it); the availability
rules are tested without. Parity against the reference is parity/msda/test_parity.py's and the gate's;
the sm_90 compile without spills is tests/test_triton_kernel.py's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from impls import msda, triton_kernel
from impls.msda import triton_kernel as msda_triton
from parity.msda.regressions import REGRESSIONS

kernel = msda.get("triton")
needs_interpreter = pytest.mark.skipif(
    not kernel.available("cpu"), reason=f"triton unavailable on cpu: {kernel.unavailable_reason('cpu')}"
)


def operands(problem, dtype=torch.float32):
    value, locations, weights, grad_output = problem.tensors(dtype)
    return [value, *problem.index_tensors("cpu"), locations, weights], grad_output


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv(triton_kernel.INTERPRETER, raising=False)
    assert "TRITON_INTERPRET=1" in kernel.unavailable_reason("cpu")
    assert not kernel.available("cpu")


def test_a_missing_triton_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setenv(triton_kernel.INTERPRETER, "1")
    monkeypatch.setattr(triton_kernel, "_kernels", lambda: "triton not importable: ModuleNotFoundError: triton")
    assert kernel.unavailable_reason("cpu") == "triton not importable: ModuleNotFoundError: triton"


def test_a_broken_msda_kernel_module_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setenv(triton_kernel.INTERPRETER, "1")
    monkeypatch.setattr(triton_kernel, "_kernels", lambda: object())
    monkeypatch.setattr(msda_triton, "_kernels", lambda: "triton not importable: SyntaxError: bad kernel")
    assert kernel.unavailable_reason("cpu") == "triton not importable: SyntaxError: bad kernel"


def test_interpreted_it_is_checked_but_never_picked_nor_timed(monkeypatch):
    monkeypatch.setenv(triton_kernel.INTERPRETER, "1")
    assert "not timed" in kernel.untimed_reason("cpu")
    assert msda.auto(torch.device("cpu"), torch.float32).name != "triton"


@needs_interpreter
@pytest.mark.parametrize("name", ["per_level_split", "x_first"])
def test_opcheck(name):
    arguments, grad_output = operands(REGRESSIONS[name])
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in arguments]
    torch.library.opcheck(msda_triton.forward_op, leaves)
    torch.library.opcheck(msda_triton.backward_op, (grad_output, *[t.detach() for t in arguments]))


@needs_interpreter
def test_fewer_programs_than_tiles_walk_every_tile(monkeypatch):
    """triton-ascend starts one program per vector core, each striding over the tiles: same numbers."""
    # 2 x 70 rows in blocks of 128 rows (D=16), three heads: 6 tiles, one with a tail, walked by 4 programs.
    problem = dataclasses.replace(REGRESSIONS["per_level_split"], queries=70, heads=3, channels=16)
    arguments, grad_output = operands(problem)
    value, shapes, starts, locations, weights = arguments
    leaves = [t.requires_grad_() for t in (value, locations, weights)]

    def run():
        output = kernel(leaves[0], shapes, starts, leaves[1], leaves[2])
        return (output, *torch.autograd.grad(output, leaves, grad_output))

    one_per_tile = run()
    kernels = msda_triton._kernels()
    monkeypatch.setattr(kernels, "_programs", lambda tiles, device: 4)
    for got, want in zip(run(), one_per_tile):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@needs_interpreter
def test_reduced_precision_accumulates_in_float():
    arguments, grad_output = operands(REGRESSIONS["colliding_value_gradient"], torch.bfloat16)
    value, shapes, starts, locations, weights = arguments
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    output = kernel(leaves[0], shapes, starts, leaves[1], leaves[2])
    exact = kernel(value.detach().float(), shapes, starts, locations.detach().float(), weights.detach().float())
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), exact, rtol=2**-8, atol=1e-6)
    assert [g.dtype for g in torch.autograd.grad(output, leaves, grad_output)] == [torch.bfloat16] * 3


@needs_interpreter
def test_int32_index_tensors_give_the_same_numbers():
    arguments, _ = operands(REGRESSIONS["per_level_split"])
    value, shapes, starts, locations, weights = arguments
    torch.testing.assert_close(kernel(value, shapes.int(), starts.int(), locations, weights),
                               kernel(*arguments), rtol=0, atol=0)
