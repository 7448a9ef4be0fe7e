"""`optimized`'s paths that the parity problems are too small to reach.

Parity draws problems of a few thousand sampled elements, so `optimized`
always takes its one-multiply paths and a single batch part there. Here the
size switch and the CPU budget are lowered so that the channel and point
loops, and one part per image sharing one gradient buffer, meet the reference.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import impls
from impls import optimized as optimized_module
from parity.compare import assert_matches_reference
from parity.regressions import REGRESSIONS


@pytest.fixture
def large_paths(monkeypatch):
    monkeypatch.setattr(optimized_module, "SMALL", 0)
    monkeypatch.setattr(optimized_module, "CPU_TEMPORARY_BUDGET", 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", REGRESSIONS)
def test_loops_and_per_image_parts_match_reference(large_paths, name, dtype):
    problem = dataclasses.replace(REGRESSIONS[name], batch=3)
    assert_matches_reference(impls.get("optimized"), problem, dtype)


def test_the_batch_is_cut_into_one_part_per_image_under_a_tiny_budget(large_paths):
    assert optimized_module._batch_chunks(3, 10, torch.device("cpu")) == [slice(0, 1), slice(1, 2), slice(2, 3)]
