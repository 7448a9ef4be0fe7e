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


@fixture_ok
@given(problem=problems())
@with_regressions
def test_forward_matches_reference(impl, dtype, device, problem):
    check(impl, dtype, device, problem, ["output"])


@fixture_ok
@given(problem=problems())
@with_regressions
def test_input_and_mask_gradients_match_reference(impl, dtype, device, problem):
    check(impl, dtype, device, problem, ["grad_input", "grad_mask"])


@fixture_ok
@given(problem=problems(smooth=True))
@with_regressions(smooth_only=True)
def test_offset_gradient_matches_reference(impl, dtype, device, problem):
    check(impl, dtype, device, problem, ["grad_offset"])


@pytest.mark.compiling
@pytest.mark.parametrize("name", [name for name, problem in REGRESSIONS.items() if problem.smooth])
def test_compiling_implementations_on_regressions(impl, dtype, device, name):
    """Implementations that compile per shape (seconds each): every quantity on the smooth regression problems."""
    check(impl, dtype, device, REGRESSIONS[name], ["output", "grad_input", "grad_offset", "grad_mask"])
