"""The parity property tests' makers, for every operator: a hypothesis test of some quantities of every
implementation (conftest.py's impl_dtype) on drawn problems and the operator's regression problems."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings

from parity.compare import assert_matches_reference
from parity.operators import OPERATORS
from parity.thresholds import Thresholds

# impl, dtype and device are plain per-test values, not state to reset between examples.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
# Interpreted kernels (Triton's CPU interpreter) take about a second per example: their tests draw a third
# of the profile's examples.
INTERPRETED_EXAMPLES = max(settings.default.max_examples // 3, 1)


def with_regressions(test, operator: str, smooth_only: bool = False):
    for problem in OPERATORS[operator].regressions.values():
        if problem.smooth or not smooth_only:
            test = example(problem=problem)(test)
    return test


def property_test(quantities, operator: str = "dcnv3", smooth: bool | None = None, examples: int | None = None,
                  regressions: bool = True):
    """A hypothesis test of `quantities` on drawn problems (smooth ones for the sampling-position gradient),
    and the regression problems unless regressions is False; `examples` caps the drawn ones."""
    spec = OPERATORS[operator]
    thresholds = Thresholds.load(operator=operator)

    @(fixture_ok if examples is None else settings(fixture_ok, max_examples=examples))
    @given(problem=spec.problems(smooth=smooth))
    def test(impl, dtype, device, problem):
        assert_matches_reference(impl, problem, dtype, device, quantities, thresholds)

    return with_regressions(test, operator, smooth_only=bool(smooth)) if regressions else test
