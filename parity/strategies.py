"""Hypothesis strategies that draw whole DCNv3 problems.

Bounded so that the float64 reference (Python loops) runs an example forward
and backward in well under a second on a 2-core CPU: see LOOP_BUDGET.
"""

from __future__ import annotations

from hypothesis import strategies as st

from impls import DCNv3Params
from parity.problems import OFFSET_KINDS, Problem, loop_count, minimum_extent

# N*Ho*Wo*G*P of the reference's loops; ~2500 is ~40 ms forward, ~120 ms backward.
LOOP_BUDGET = 2500
GROUP_CHANNELS = (1, 2, 3, 4, 8, 16, 32, 64, 71)


@st.composite
def params(draw) -> DCNv3Params:
    kernel_h = draw(st.integers(1, 5))
    kernel_w = draw(st.one_of(st.just(kernel_h), st.integers(1, 5)))
    square_odd = kernel_h == kernel_w and kernel_h % 2 == 1 and kernel_h > 1
    pad_h = draw(st.integers(0, 2))
    return DCNv3Params(
        kernel_h=kernel_h,
        kernel_w=kernel_w,
        stride_h=draw(st.integers(1, 3)),
        stride_w=draw(st.integers(1, 3)),
        pad_h=pad_h,
        pad_w=draw(st.one_of(st.just(pad_h), st.integers(0, 2))),
        dilation_h=draw(st.integers(1, 2)),
        dilation_w=draw(st.integers(1, 2)),
        group=draw(st.integers(1, 4)),
        group_channels=draw(st.sampled_from(GROUP_CHANNELS)),
        offset_scale=draw(st.one_of(st.just(1.0), st.floats(0.5, 2.0))),
        remove_center=draw(st.booleans()) if square_odd else False,
    )


@st.composite
def problems(draw, smooth: bool | None = None) -> Problem:
    """A whole problem; smooth=True keeps sampling coordinates off integers (offset gradients)."""
    p = draw(params())
    # About one problem in ten has an empty batch (a detection model's empty crop list): every
    # implementation must return the empty output and empty gradients.
    batch = 0 if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 2))
    min_h = minimum_extent(p.kernel_h, p.dilation_h, p.pad_h)
    min_w = minimum_extent(p.kernel_w, p.dilation_w, p.pad_w)
    height = draw(st.integers(min_h, min_h + 7))
    width = draw(st.integers(min_w, min_w + 7))
    problem = Problem(
        batch=batch,
        height=height,
        width=width,
        params=p,
        offset_kind=draw(st.sampled_from(OFFSET_KINDS)),
        smooth=draw(st.booleans()) if smooth is None else smooth,
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    # Shrink the image rather than reject the draw: rejection would starve
    # hypothesis on large kernels and groups.
    while loop_count(problem) > LOOP_BUDGET and (problem.height > min_h or problem.width > min_w):
        problem = Problem(
            batch=problem.batch,
            height=max(min_h, problem.height - 1),
            width=max(min_w, problem.width - 1),
            params=p,
            offset_kind=problem.offset_kind,
            smooth=problem.smooth,
            seed=problem.seed,
        )
    return problem
