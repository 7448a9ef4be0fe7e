"""Every available DCNv3 implementation against the float64 reference: forward and all three gradients."""

from __future__ import annotations

import pytest

from parity.compare import assert_matches_reference
from parity.properties import INTERPRETED_EXAMPLES, property_test
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds

# Interpreted kernels: one test of every quantity at once (each example's forward and backward computed
# once; the offset gradient on the smooth problems). The regression problems are the gate's, which runs
# them on every implementation and dtype (nox -s tests), interpreted ones included.
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
    assert_matches_reference(impl, REGRESSIONS[name], dtype, device, FORWARD + GRADIENTS + OFFSET, Thresholds.load())
