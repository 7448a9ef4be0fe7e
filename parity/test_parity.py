"""Every available implementation against the float64 reference: forward and all three gradients."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from parity.compare import assert_matches_reference
from parity.regressions import REGRESSIONS
from parity.strategies import problems
from parity.thresholds import Thresholds

THRESHOLDS = Thresholds.load()
# impl, dtype and device are plain per-test values, not state to reset between examples.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def with_regressions(test=None, *, smooth_only=False):
    def decorate(test):
        for problem in REGRESSIONS.values():
            if problem.smooth or not smooth_only:
                test = example(problem=problem)(test)
        return test

    return decorate(test) if test is not None else decorate


def check(impl, dtype, device, problem, quantities):
    assert_matches_reference(impl, problem, dtype, device, quantities, THRESHOLDS)


def property_test(quantities, smooth: bool | None = None, examples: int | None = None, regressions: bool = True):
    """A hypothesis test of `quantities` on drawn problems (smooth ones for the offset gradient), and the
    regression problems unless regressions is False; `examples` caps the drawn ones."""

    @(fixture_ok if examples is None else settings(fixture_ok, max_examples=examples))
    @given(problem=problems(smooth=smooth))
    def test(impl, dtype, device, problem):
        check(impl, dtype, device, problem, quantities)

    return with_regressions(test, smooth_only=bool(smooth)) if regressions else test


# Interpreted kernels (Triton's CPU interpreter) take about a second per example: one test of every
# quantity at once (each example's forward and backward computed once; the offset gradient on the smooth
# problems), on a third of the profile's drawn examples. The regression problems are the gate's, which
# runs them on every implementation and dtype (nox -s tests), interpreted ones included.
INTERPRETED_EXAMPLES = max(settings.default.max_examples // 3, 1)
FORWARD, GRADIENTS, OFFSET = ["output"], ["grad_input", "grad_mask"], ["grad_offset"]
test_forward_matches_reference = pytest.mark.native(property_test(FORWARD))
test_input_and_mask_gradients_match_reference = pytest.mark.gradients(pytest.mark.native(property_test(GRADIENTS)))
test_offset_gradient_matches_reference = pytest.mark.gradients(pytest.mark.native(property_test(OFFSET, smooth=True)))
test_interpreted_matches_reference = pytest.mark.interpreted(
    property_test(FORWARD + GRADIENTS + OFFSET, examples=INTERPRETED_EXAMPLES, regressions=False))


@pytest.mark.compiling
@pytest.mark.parametrize("name", [name for name, problem in REGRESSIONS.items() if problem.smooth])
def test_compiling_implementations_on_regressions(impl, dtype, device, name):
    """Implementations that compile per shape (seconds each): every quantity they have on the smooth regression
    problems."""
    check(impl, dtype, device, REGRESSIONS[name], ["output", "grad_input", "grad_offset", "grad_mask"])
