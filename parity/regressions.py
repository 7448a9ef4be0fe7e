"""Problems that pin each item of the contract's "published code differs" list.

Every parity test runs them as hypothesis @example cases and the gate sweeps
them before its drawn cases; tests/test_published_defects.py checks that a
port carrying each defect fails on them.
"""

from __future__ import annotations

from impls import DCNv3Params
from parity.problems import Problem

REGRESSIONS: dict[str, Problem] = {
    # 1. The Python core pads the width by pad_h and the height by pad_w.
    "padding_order": Problem(
        regression=True,
        batch=1, height=5, width=7,
        params=DCNv3Params(3, 3, 1, 1, 2, 0, 1, 1, group=2, group_channels=3),
        offset_kind="inside", smooth=True, seed=1,
    ),
    # 2. float32 sampling positions in a float64 run: ~1e-5 errors show on a
    # wide image with a non-dyadic offset_scale.
    "float64_positions": Problem(
        regression=True,
        batch=1, height=3, width=96,
        params=DCNv3Params(1, 3, 1, 1, 0, 1, 1, 1, group=1, group_channels=2, offset_scale=0.7),
        offset_kind="inside", smooth=True, seed=2,
    ),
    # 3. The CUDA kernel has no bfloat16: each implementation declares its dtypes,
    # and a non-square kernel and stride keep the [kh, kw] order honest.
    "declared_dtypes_nonsquare": Problem(
        regression=True,
        batch=2, height=6, width=5,
        params=DCNv3Params(2, 3, 2, 1, 1, 0, 1, 2, group=3, group_channels=4, offset_scale=1.5),
        offset_kind="border", smooth=False, seed=3,
    ),
    # 4. atomicAdd input gradients: many points land on the same pixels (a
    # large kernel over a tiny image), so scattered sums collide.
    "colliding_input_gradient": Problem(
        regression=True,
        batch=1, height=3, width=3,
        params=DCNv3Params(5, 5, 1, 1, 2, 2, 1, 1, group=1, group_channels=8, remove_center=True),
        offset_kind="inside", smooth=True, seed=4,
    ),
    # 5. A port written from a "(dy, dx)" pseudo-formula: asymmetric offsets on
    # a non-square image make a swapped pair visible.
    "offset_pair_order": Problem(
        regression=True,
        batch=1, height=4, width=9,
        params=DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=4),
        offset_kind="inside", smooth=True, seed=5,
    ),
    # 6. Far-outside points: every corner zero, nothing may leak from padding.
    "far_outside": Problem(
        regression=True,
        batch=2, height=4, width=4,
        params=DCNv3Params(3, 3, 2, 2, 1, 1, 2, 2, group=2, group_channels=2, offset_scale=2.0),
        offset_kind="far", smooth=True, seed=6,
    ),
}
