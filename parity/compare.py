"""Run one implementation on one problem of its operator and compare it with the float64 reference."""

from __future__ import annotations

import functools
import math
import weakref
from typing import NamedTuple

import torch

from impls import Implementation, devices
from parity import operators
from parity.summary import Verdict
from parity.thresholds import Thresholds
# Per implementation, its last output while something else keeps it alive (KernelBench's cached-result check).
_last_output: dict[str, weakref.ref] = {}


class Cheat(Exception):
    """An implementation broke a rule no correct kernel breaks (KernelBench's anti-cheat list)."""


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def checked_call(impl: Implementation, leaves, problem) -> torch.Tensor:
    """impl's output, after checking that it has the input's dtype and device, that the call left its inputs as they
    were, that the output shares no memory with them, and that it is not the very object the last call
    returned."""
    before = [t.detach().clone() for t in leaves]
    output = problem.call(impl, leaves)
    if output.dtype != leaves[0].dtype:
        # Published defect 3: a dtype list that is not true (the gate runs every declared dtype).
        raise Cheat(f"contract: a {leaves[0].dtype} input gave a {output.dtype} output")
    if output.device != leaves[0].device:
        raise Cheat(f"contract: an input on {leaves[0].device} gave an output on {output.device}")
    names = [quantity.removeprefix("grad_") for quantity in operators.of(problem).quantities[1:]]
    for name, tensor, copy in zip(names, leaves, before):
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


def evaluate(impl: Implementation, problem, dtype: torch.dtype, device, quantities=None) -> dict[str, torch.Tensor]:
    """The asked-for quantities (default: all the operator's) of output and the gradients, as float64 CPU tensors.

    The gradient through the sampling positions (grad_offset, grad_sampling_locations) is left out
    unless the problem is smooth, and then kept only where the problem says it is comparable: at integer
    coordinates it is one-sided by definition and differs across position roundings. The backward runs
    only when a gradient is asked for.
    """
    *leaves, grad_output = problem.tensors(dtype, device)
    return _run(impl, leaves, grad_output, problem, quantities, checked_call)


def evaluate_on_side_stream(impl: Implementation, problem, dtype: torch.dtype, device,
                            quantities=None) -> dict[str, torch.Tensor]:
    """As evaluate, with every input written on a new current stream after milliseconds of other work
    there, into tensors that hold NaN until then: a kernel launched on another stream than the current
    one (the default stream, say) reads the NaN and fails the case (KernelBench's stream check)."""
    device = torch.device(device)
    host = problem.tensors(dtype, "cpu")
    with devices.side_stream(device):
        placed = [torch.full(t.shape, math.nan, dtype=dtype, device=device) for t in host]
        devices.keep_busy(device)
        for target, source in zip(placed, host):
            target.copy_(source, non_blocking=True)
        return _run(impl, placed[:-1], placed[-1], problem, quantities, checked_call)


def expected(problem, dtype: torch.dtype, quantities=None) -> dict[str, torch.Tensor]:
    """The reference on the same dtype-rounded inputs, computed and kept in float64; once per problem,
    dtype and quantities in a process (every implementation is checked on the same problems). The
    tensors are shared: read them, do not write them."""
    return _reference(problem, dtype, tuple(quantities or operators.of(problem).quantities))


@functools.lru_cache(maxsize=1024)
def _reference(problem, dtype: torch.dtype, quantities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    *leaves, grad_output = [t.to(torch.float64) for t in problem.tensors(dtype, "cpu")]
    return _run(operators.of(problem).registry.get("reference"), leaves, grad_output, problem, quantities)


def plain_call(impl: Implementation, leaves, problem) -> torch.Tensor:
    return problem.call(impl, leaves)


def quantities_of(impl: Implementation) -> tuple[str, ...]:
    """What the gate checks of impl: the output alone where it has no backward."""
    return operators.of(impl).quantities_of(impl)


def _run(impl, leaves, grad_output, problem, quantities, call=plain_call):
    operator = operators.of(problem)
    quantities = quantities or operator.quantities
    gradients = bool(set(quantities) - {"output"})
    leaves = [t.detach().requires_grad_(gradients) for t in leaves]
    output = call(impl, leaves, problem)
    result = {"output": output}
    if gradients:
        grads = torch.autograd.grad(output, leaves, grad_output)
        result.update(zip(operator.quantities[1:], grads))
        # On a device the autograd engine refuses such a gradient itself, but not for a tensor subclass
        # (engine.cpp validate_outputs), which the emulated NPU's tensors are.
        for quantity, leaf in zip(operator.quantities[1:], leaves):
            if result[quantity].device != leaf.device:
                raise Cheat(f"contract: {quantity} came back on {result[quantity].device} for an input on {leaf.device}")
        rough = result.pop(operator.rough)
        if problem.smooth:
            comparable = problem.comparable(leaves).to(rough.device)
            result[operator.rough] = torch.where(comparable, rough, torch.zeros_like(rough))
    # To the host first: on an NPU a cast to float64 gives float32.
    return {name: t.detach().cpu().to(torch.float64) for name, t in result.items() if name in quantities}


class Difference(NamedTuple):
    max_abs: float
    max_rel: float  # max_abs / max |reference|
    mean_abs: float


FAILED = Difference(math.inf, math.inf, math.inf)  # no output, or one of the wrong shape
UNKNOWN = Difference(math.nan, math.nan, math.nan)  # the baseline raised


def differences(actual: torch.Tensor, reference: torch.Tensor) -> Difference:
    """How far actual is from reference; NaN where the reference has NaN counts as equal."""
    if actual.shape != reference.shape:
        return FAILED
    if reference.numel() == 0:
        return Difference(0.0, 0.0, 0.0)
    both_nan = torch.isnan(actual) & torch.isnan(reference)
    diff = torch.where(both_nan, torch.zeros_like(actual), (actual - reference).abs())
    diff = torch.nan_to_num(diff, nan=math.inf)
    max_abs = diff.max().item()
    scale = torch.nan_to_num(reference.abs(), nan=0.0).max().item()
    return Difference(max_abs, max_abs / scale if scale > 0 else max_abs, diff.mean().item())


def judge(name: str, dtype: torch.dtype, actual: dict | None, truth: dict, baseline: dict | None,
          thresholds: Thresholds) -> dict[str, Verdict]:
    """Per quantity of truth, the verdict on `name`'s outputs `actual` (None: the call raised) under the
    per-case rule, against `baseline`, the baseline's Differences on the same case (None: it raised)."""
    judged = {}
    for quantity, reference in truth.items():
        found = FAILED if actual is None else differences(actual[quantity], reference)
        yardstick = UNKNOWN if baseline is None else baseline[quantity]
        bound = thresholds.get(name, dtype, quantity)
        limits = bound.judge(found.max_abs, found.mean_abs, yardstick.max_abs, yardstick.mean_abs)
        judged[quantity] = Verdict(
            max_abs_diff=found.max_abs, mean_abs_diff=found.mean_abs, max_rel_diff=found.max_rel,
            baseline_max_abs_diff=yardstick.max_abs, baseline_mean_abs_diff=yardstick.mean_abs,
            bound=limits.max_bound, mean_bound=limits.mean_bound, ceiling=bound.ceiling, rule=limits.rule,
            passed=limits.passed,
        )
    return judged


def assert_matches_reference(impl: Implementation, problem, dtype: torch.dtype, device="cpu",
                             quantities=None, thresholds: Thresholds | None = None) -> None:
    """Each quantity within its per-case bound: the baseline runs on the same inputs, on the same device."""
    operator = operators.of(problem)
    thresholds = thresholds or Thresholds.load(operator=operator.name)
    asked = [q for q in quantities or operator.quantities if q in quantities_of(impl)]
    if not asked:
        raise ValueError(f"{impl.name} has no backward: none of {', '.join(quantities)} can be checked")
    truth = expected(problem, dtype, asked)
    actual = evaluate(impl, problem, dtype, device, asked)
    yardstick = actual if impl.baseline else evaluate(operator.registry.baseline(), problem, dtype, device, asked)
    measured = {q: differences(yardstick[q], truth[q]) for q in truth}
    for quantity, verdict in judge(impl.name, dtype, actual, truth, measured, thresholds).items():
        torch.testing.assert_close(
            actual[quantity], truth[quantity], atol=verdict.bound, rtol=0,
            msg=lambda m, q=quantity, v=verdict: f"{impl.name} {q} over {v.bound:g} ({v.rule}) on {problem.label()}\n{m}",
        )
        assert verdict.mean_abs_diff <= verdict.mean_bound, (
            f"{impl.name} {quantity}: mean abs diff {verdict.mean_abs_diff:.3g} over {verdict.mean_bound:.3g} "
            f"({verdict.baseline_mean_abs_diff:.3g} for the baseline) on {problem.label()}")
