"""Every available MSDA implementation against the float64 reference: output and the three gradients
(value, sampling locations on smooth problems, attention weights). Interpreted kernels (Triton's CPU
interpreter) take one test of every quantity on smooth problems, INTERPRETED_DRAWS examples (about 5 s
each there): the gate runs them on the regression problems and two drawn ones in every dtype."""

from __future__ import annotations

import pytest

from parity.properties import property_test

pytestmark = pytest.mark.operator("msda")

INTERPRETED_DRAWS = 3
FORWARD, GRADIENTS, LOCATIONS = ["output"], ["grad_value", "grad_attention_weights"], ["grad_sampling_locations"]
test_forward_matches_reference = pytest.mark.native(property_test(FORWARD, "msda"))
test_value_and_weight_gradients_match_reference = pytest.mark.gradients(
    pytest.mark.native(property_test(GRADIENTS, "msda")))
test_location_gradient_matches_reference = pytest.mark.gradients(
    pytest.mark.native(property_test(LOCATIONS, "msda", smooth=True)))
test_interpreted_matches_reference = pytest.mark.interpreted(
    property_test(FORWARD + GRADIENTS + LOCATIONS, "msda", smooth=True, examples=INTERPRETED_DRAWS,
                  regressions=False))
