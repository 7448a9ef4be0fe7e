"""Every available MSDA implementation against the float64 reference: output and the three gradients
(value, sampling locations on smooth problems, attention weights)."""

from __future__ import annotations

import pytest

from parity.properties import property_test

pytestmark = pytest.mark.operator("msda")

FORWARD, GRADIENTS, LOCATIONS = ["output"], ["grad_value", "grad_attention_weights"], ["grad_sampling_locations"]
test_forward_matches_reference = pytest.mark.native(property_test(FORWARD, "msda"))
test_value_and_weight_gradients_match_reference = pytest.mark.gradients(
    pytest.mark.native(property_test(GRADIENTS, "msda")))
test_location_gradient_matches_reference = pytest.mark.gradients(
    pytest.mark.native(property_test(LOCATIONS, "msda", smooth=True)))
