"""MSDA problems that pin each item of the contract's "published code differs" list (../shared/MSDA.md),
and the cases every MSDA implementation must get right however the sweep draws: swept first by the gate,
@example cases of the parity tests."""

from __future__ import annotations

from parity.msda.problems import MSDAProblem

REGRESSIONS: dict[str, MSDAProblem] = {
    # 1. The Python core splits value per level by a list of H_l*W_l: unequal levels, every one of them
    # sampled, so a wrong split or a level read with another's width shows.
    "per_level_split": MSDAProblem(
        regression=True, batch=2, levels=((4, 6), (3, 3), (2, 5), (1, 1)), queries=5, heads=2, channels=3,
        points=2, location_kind="inside", smooth=True, seed=1,
    ),
    # 2. atomicAdd value gradients: many samples on the few pixels of tiny levels collide.
    "colliding_value_gradient": MSDAProblem(
        regression=True, batch=1, levels=((1, 2), (2, 1)), queries=24, heads=2, channels=4, points=8,
        location_kind="inside", seed=2,
    ),
    # 3. (x, y) against (y, x): levels far from square, so the swapped reading samples other pixels
    # (mx_driving's documentation says both; the gate settles it on a real NPU).
    "x_first": MSDAProblem(
        regression=True, batch=1, levels=((2, 9), (7, 3)), queries=6, heads=1, channels=8, points=3,
        location_kind="inside", smooth=True, seed=3,
    ),
    # 4. The op applies no softmax (DCNv4's FlashDeformAttn does, on logits): weights of any sign and sum.
    "weights_not_normalised": MSDAProblem(
        regression=True, batch=1, levels=((3, 4), (2, 2)), queries=4, heads=3, channels=2, points=4,
        location_kind="inside", softmax=False, smooth=True, seed=4,
    ),
    # Zero outside each level, on and beyond its -1 / H / W lines, with one channel per head.
    "borders_one_channel": MSDAProblem(
        regression=True, batch=2, levels=((3, 3), (1, 4), (5, 2)), queries=6, heads=4, channels=1, points=3,
        location_kind="border", seed=5,
    ),
    # A detection model's empty batch: empty output and gradients.
    "empty_batch": MSDAProblem(
        regression=True, batch=0, levels=((2, 3), (1, 1)), queries=3, heads=2, channels=4, points=2, seed=6,
    ),
}
