"""What every native kernel registered as a torch.library operator shares: torch.compile sees one operator."""

from __future__ import annotations

import pytest
import torch

import impls
from parity.regressions import REGRESSIONS

# Triton's atomic input gradient may add in another order from run to run.
NATIVE = {"cpu_kernel": 0.0, "triton": 1e-6}


@pytest.mark.parametrize("name", NATIVE)
def test_compiles_as_one_operator_with_its_backward(name):
    kernel = impls.get(name)
    if not kernel.available("cpu"):
        pytest.skip(f"{name} unavailable on cpu: {kernel.unavailable_reason('cpu')}")
    problem = REGRESSIONS["offset_pair_order"]
    input, offset, mask, grad_output = problem.tensors(torch.float32)
    tensors = [t.requires_grad_() for t in (input, offset, mask)]
    compiled = torch.compile(lambda *xs: kernel.fn(*xs, problem.params), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*tensors), tensors, grad_output)
    want = torch.autograd.grad(kernel(*tensors, problem.params), tensors, grad_output)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=NATIVE[name])
