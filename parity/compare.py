"""Run one implementation on one problem and compare it with the float64 reference."""

from __future__ import annotations

import weakref

import torch

from impls import Implementation, get
from parity.problems import Problem

QUANTITIES = ("output", "grad_input", "grad_offset", "grad_mask")
TENSORS = ("input", "offset", "mask")
# Per implementation, its last output while something else keeps it alive (KernelBench's cached-result check).
_last_output: dict[str, weakref.ref] = {}


class Cheat(Exception):
    """An implementation broke a rule no correct kernel breaks (KernelBench's anti-cheat list)."""


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def checked_call(impl: Implementation, leaves, params) -> torch.Tensor:
    """impl's output, after checking that the call left its inputs as they were, that the output shares
    no memory with them, and that it is not the very object the last call returned."""
    before = [t.detach().clone() for t in leaves]
    output = impl(*leaves, params)
    for name, tensor, copy in zip(TENSORS, leaves, before):
        kept = (tensor.detach() == copy) | (tensor.detach().isnan() & copy.isnan())
        if not bool(kept.all()):
            raise Cheat(f"anti-cheat: the call changed its {name}")
    if output.numel() and any(t.numel() and _storage(output) == _storage(t) for t in leaves):
        raise Cheat("anti-cheat: the output shares memory with an input")
    previous = _last_output.get(impl.name)
    if previous is not None and previous() is output:
        raise Cheat("anti-cheat: the same output object came back for a different problem")
    _last_output[impl.name] = weakref.ref(output)
    return output


def evaluate(impl: Implementation, problem: Problem, dtype: torch.dtype, device,
             quantities=QUANTITIES) -> dict[str, torch.Tensor]:
    """The asked-for quantities of output and the three gradients, as float64 CPU tensors.

    grad_offset is left out unless the problem is smooth, and then kept only
    where the problem says it is comparable: at integer coordinates it is
    one-sided by definition and differs across position roundings. The
    backward runs only when a gradient is asked for.
    """
    input, offset, mask, grad_output = problem.tensors(dtype, device)
    return _run(impl, (input, offset, mask), grad_output, problem, quantities, checked_call)


def expected(problem: Problem, dtype: torch.dtype, quantities=QUANTITIES) -> dict[str, torch.Tensor]:
    """The reference on the same dtype-rounded inputs, computed and kept in float64."""
    tensors = [t.to(torch.float64) for t in problem.tensors(dtype, "cpu")]
    return _run(get("reference"), tensors[:3], tensors[3], problem, quantities)


def plain_call(impl: Implementation, leaves, params) -> torch.Tensor:
    return impl(*leaves, params)


def _run(impl, leaves, grad_output, problem, quantities, call=plain_call):
    leaves = [t.detach().requires_grad_() for t in leaves]
    output = call(impl, leaves, problem.params)
    result = {"output": output}
    if set(quantities) - {"output"}:
        grads = torch.autograd.grad(output, leaves, grad_output)
        result.update(zip(QUANTITIES[1:], grads))
        if problem.smooth:
            comparable = problem.offset_gradient_mask(leaves[1]).to(grads[1].device)
            result["grad_offset"] = torch.where(comparable, grads[1], torch.zeros_like(grads[1]))
        else:
            del result["grad_offset"]
    # To the host first: on an NPU a cast to float64 gives float32.
    return {name: t.detach().cpu().to(torch.float64) for name, t in result.items() if name in quantities}


def differences(actual: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max_abs_diff, max_abs_diff / max|reference|); NaN where the reference has NaN counts as equal."""
    if actual.shape != reference.shape:
        return float("inf"), float("inf")
    if reference.numel() == 0:
        return 0.0, 0.0
    both_nan = torch.isnan(actual) & torch.isnan(reference)
    diff = torch.where(both_nan, torch.zeros_like(actual), (actual - reference).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    max_abs = diff.max().item()
    scale = torch.nan_to_num(reference.abs(), nan=0.0).max().item()
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def assert_matches_reference(impl: Implementation, problem: Problem, dtype: torch.dtype, device="cpu",
                             quantities=None, thresholds=None) -> None:
    """torch.testing.assert_close of each quantity against the reference, at its threshold."""
    from parity.thresholds import Thresholds

    thresholds = thresholds or Thresholds.load()
    asked = quantities or QUANTITIES
    actual = evaluate(impl, problem, dtype, device, asked)
    truth = expected(problem, dtype, asked)
    for quantity in quantities or list(truth):
        bound = thresholds.get(impl.name, dtype, quantity)
        torch.testing.assert_close(
            actual[quantity], truth[quantity], atol=bound, rtol=0,
            msg=lambda m, q=quantity, b=bound: f"{impl.name} {q} over {b:g} on {problem.label()}\n{m}",
        )
