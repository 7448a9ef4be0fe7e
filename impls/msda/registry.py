"""MSDA's registry: implementations called as `impl(value, spatial_shapes, level_start_index,
sampling_locations, attention_weights)`, differentiable in value, locations and weights; plug-ins under
the entry-point group `dcnv3_harness.msda`."""

from __future__ import annotations

from impls.msda.contract import validate
from impls.registry import Operator, Registry


MSDA = Operator("msda", "dcnv3_harness.msda", validate, (0, 3, 4))
IMPLEMENTATIONS = Registry(MSDA)
register = IMPLEMENTATIONS.register
names = IMPLEMENTATIONS.names
get = IMPLEMENTATIONS.get
baseline = IMPLEMENTATIONS.baseline
auto = IMPLEMENTATIONS.auto
