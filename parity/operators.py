"""What the shared parity machinery (compare, runner, gate, spread) needs of each operator: `--op dcnv3|msda`.

A problem (parity/problems.py, parity/msda/problems.py) is small hashable data with `tensors(dtype, device)`
(the differentiable leaves, then grad_output), `call(impl, leaves)`, `comparable(leaves)` (where the one
gradient that is one-sided at integer pixel positions may be compared), `label()`, `describe()`, `smooth`
and `regression`; its `OPERATOR` names its entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import impls  # noqa: F401  (registers every operator's implementations)
from impls.registry import REGISTRIES, Registry
from parity import regressions, strategies
from parity.msda import regressions as msda_regressions
from parity.msda import strategies as msda_strategies


@dataclass(frozen=True)
class ParityOperator:
    name: str
    title: str
    # The output, then the gradient of each differentiable leaf, in the leaves' order.
    quantities: tuple[str, ...]
    # The gradient through the sampling positions: compared on smooth problems only, where comparable.
    rough: str
    regressions: dict
    problems: Callable
    # The regression problem whose sums collide most, repeated for the run-to-run spread; and the one run
    # once more with its inputs written on a side stream.
    spread_case: str
    stream_case: str

    @property
    def registry(self) -> Registry:
        return REGISTRIES[self.name]

    def quantities_of(self, impl) -> tuple[str, ...]:
        """What the gate checks of impl: the output alone where it has no backward."""
        return self.quantities[:1] if impl.forward_only else self.quantities


OPERATORS = {
    "dcnv3": ParityOperator("dcnv3", "DCNv3",
                            ("output", "grad_input", "grad_offset", "grad_mask"), "grad_offset",
                            regressions.REGRESSIONS, strategies.problems, "colliding_input_gradient", "padding_order"),
    "msda": ParityOperator("msda", "MSDA",
                           ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights"),
                           "grad_sampling_locations", msda_regressions.REGRESSIONS, msda_strategies.problems,
                           "colliding_value_gradient", "per_level_split"),
}


def of(thing) -> ParityOperator:
    """The operator of a problem (its OPERATOR) or of an implementation (its operator)."""
    name = thing.OPERATOR if hasattr(thing, "OPERATOR") else thing.operator.name
    return OPERATORS[name]
