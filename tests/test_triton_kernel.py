"""The Triton kernel as torch.library operators, on the CPU through Triton's interpreter.

Needs TRITON_INTERPRET=1 in the environment before the kernels are first
imported (`nox -s tests` sets it); the availability rules are tested without.
Parity against the reference is parity/test_parity.py's and the gate's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import impls
import impls.triton_kernel as triton_kernel
from bench.shapes import same_padding_params
from parity.problems import Problem
from parity.regressions import REGRESSIONS

kernel = impls.get("triton")
needs_interpreter = pytest.mark.skipif(
    not kernel.available("cpu"), reason=f"triton unavailable on cpu: {kernel.unavailable_reason('cpu')}"
)


def operands(name, dtype):
    problem = REGRESSIONS[name]
    input, offset, mask, grad_output = problem.tensors(dtype)
    return problem.params, [t.requires_grad_() for t in (input, offset, mask)], grad_output


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv(triton_kernel.INTERPRETER, raising=False)
    assert "TRITON_INTERPRET=1" in kernel.unavailable_reason("cpu")


def test_interpreted_devices_are_checked_but_never_picked_nor_timed(monkeypatch):
    monkeypatch.setenv(triton_kernel.INTERPRETER, "1")
    assert "not timed" in kernel.untimed_reason("cpu")
    assert impls.registry.auto(torch.device("cpu"), torch.float32).name != "triton"


def test_a_missing_triton_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setenv(triton_kernel.INTERPRETER, "1")
    monkeypatch.setattr(triton_kernel, "_kernels", lambda: "triton not importable: ModuleNotFoundError: triton")
    assert kernel.unavailable_reason("cpu") == "triton not importable: ModuleNotFoundError: triton"
    assert impls.get("grid_sample").available("cpu")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["padding_order", "declared_dtypes_nonsquare"])
def test_opcheck(name, dtype):
    params, tensors, grad_output = operands(name, dtype)
    torch.library.opcheck(triton_kernel.forward_op, (*tensors, *params.scalars()))
    plain = [t.detach() for t in tensors]
    torch.library.opcheck(triton_kernel.backward_op, (grad_output, *plain, *params.scalars()))


@needs_interpreter
def test_fewer_programs_than_tiles_walk_every_tile(monkeypatch):
    """triton-ascend starts one program per vector core, each striding over the tiles: same numbers."""
    # 19*23 pixels in blocks of 128, three groups: 12 tiles with a tail, walked by 3 programs.
    problem = Problem(1, 19, 23, same_padding_params(3, 5), offset_kind="inside", smooth=True, seed=3)
    input, offset, mask, grad_output = problem.tensors(torch.float32)
    leaves = [t.requires_grad_() for t in (input, offset, mask)]

    def run():
        output = kernel(*leaves, problem.params)
        return (output, *torch.autograd.grad(output, leaves, grad_output))

    one_per_tile = run()
    kernels = triton_kernel._kernels()
    monkeypatch.setattr(kernels, "_programs", lambda tiles, device: 3)
    strided = run()
    for got, want in zip(strided, one_per_tile):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@needs_interpreter
def test_reduced_precision_accumulates_in_float():
    params, tensors, grad_output = operands("colliding_input_gradient", torch.bfloat16)
    output = kernel(*tensors, params)
    exact = kernel(*(t.detach().float() for t in tensors), params)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), exact, rtol=2**-8, atol=1e-6)
    grads = torch.autograd.grad(output, tensors, grad_output)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3


def test_kernels_compile_for_the_h200_without_register_spills():
    """Triton's real compiler (not the interpreter) down to a sm_90 cubin, on this CPU machine:
    every dtype, InternImage's group widths, an odd width and a 5x5 kernel build, MSDA's kernels at
    D = 8, 16, 32 and 64, with the alignment a launch gives, and ptxas reports no spills for the launch
    configuration the launchers use."""
    if isinstance(triton_kernel._kernels(), str):
        pytest.skip(triton_kernel._kernels())
    helper = Path(__file__).with_name("triton_resources.py")
    env = {k: v for k, v in os.environ.items() if k != triton_kernel.INTERPRETER}
    env["PYTHONPATH"] = os.pathsep.join([str(helper.parent.parent), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, str(helper)], capture_output=True, text=True, env=env)
    if result.returncode != 0 and "cuobjdump" in result.stderr and "No such file" in result.stderr:
        pytest.skip("this Triton wheel has no bundled cuobjdump")
    if result.returncode == 3:  # triton_resources.UNSUPPORTED
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-2000:]
    import triton_resources  # after the skip: it imports Triton
    # A forward and a backward row per dtype and configuration, DCNv3's and MSDA's.
    expected = 2 * len(triton_resources.DTYPES) * (len(triton_resources.CONFIGS) + len(triton_resources.MSDA_CHANNELS))
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == expected and {row["kernel"] for row in rows} == {
        "forward", "backward", "msda_forward", "msda_backward"}
    spilling = [row for row in rows if row["spill_bytes"] > 0]
    assert spilling == []
