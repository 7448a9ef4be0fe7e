"""Hypothesis strategies that draw whole MSDA problems: 1-4 levels of unequal sizes, 1-8 heads, D from 1
through odd sizes to 32 and more, 1-8 points, locations inside, on borders and outside, weights softmaxed
and not. Bounded so that the float64 reference runs an example in well under a second (LOOP_BUDGET)."""

from __future__ import annotations

from hypothesis import strategies as st

from parity.msda.problems import LOCATION_KINDS, MSDAProblem, loop_count

# N*Lq*M*L*P of the reference's loops.
LOOP_BUDGET = 1500
CHANNELS = (1, 2, 3, 4, 5, 8, 16, 31, 32, 64)


@st.composite
def problems(draw, smooth: bool | None = None) -> MSDAProblem:
    """A whole problem; smooth=True keeps every sample's pixel coordinates off integers (location gradients)."""
    levels = draw(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=4))
    problem = MSDAProblem(
        # About one in ten an empty batch.
        batch=0 if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 2)),
        levels=tuple(levels),
        queries=draw(st.integers(1, 12)),
        heads=draw(st.integers(1, 8)),
        channels=draw(st.sampled_from(CHANNELS)),
        points=draw(st.integers(1, 8)),
        location_kind=draw(st.sampled_from(LOCATION_KINDS)),
        softmax=draw(st.booleans()),
        smooth=draw(st.booleans()) if smooth is None else smooth,
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    # Fewer queries rather than a rejected draw.
    while loop_count(problem) > LOOP_BUDGET and problem.queries > 1:
        problem = MSDAProblem(**{**problem.__dict__, "queries": problem.queries - 1})
    return problem
