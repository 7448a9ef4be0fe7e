"""The Ascend C kernel's own source (impls/ascendc/dcnv3_kernel.h) on the emulated Ascend C API.

Built with g++ against tests/emulated_ascendc/kernel_operator.h and run through the regression problems
and the hypothesis strategies under two plans: the 910B3's (40 cores, 192 KB of unified buffer) and a
3-core, 12 KB one that forces several tiles per core, short last tiles and more than one tile per
group. Planted bugs must fail, and AddressSanitizer watches the global-memory side the emulator does
not bound. The whole .asc, host code included, runs on the emulated NPU in tests/test_npu_emulated.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import emulated_ascendc as emulated
from impls import DCNv3Params
from parity.compare import assert_matches_reference
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.strategies import problems

pytestmark = pytest.mark.skipif(emulated.compiler_missing() is not None, reason=str(emulated.compiler_missing()))

PLANS = {"910B3": emulated.DEVICE_910B3, "3-cores-12KB": emulated.SMALL_DEVICE}


@pytest.fixture(scope="module")
def driver():
    return emulated.Driver(emulated.build_driver())


def _arrays(problem: Problem):
    return [t.detach().numpy() for t in problem.tensors(torch.float32)]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", REGRESSIONS)
def test_the_kernel_matches_the_reference_on_the_regressions(driver, name, plan):
    assert_matches_reference(emulated.implementation(driver, PLANS[plan]), REGRESSIONS[name], torch.float32)


@settings(max_examples=15)
@given(problem=problems(smooth=True))
def test_the_kernel_matches_the_reference_on_drawn_problems(driver, problem):
    assert_matches_reference(emulated.implementation(driver, emulated.SMALL_DEVICE), problem, torch.float32)


@pytest.mark.parametrize("device", [emulated.DEVICE_910B3, emulated.SMALL_DEVICE,
                                    emulated.Device(vector_cores=7, ub_capacity=emulated.tiling.UB_RESERVED_BYTES + 2500)],
                         ids=["910B3", "3-cores-12KB", "7-cores-2.5KB"])
@pytest.mark.parametrize("name", ["padding_order", "declared_dtypes_nonsquare", "far_outside"])
def test_every_output_element_is_stored_exactly_once(driver, name, device):
    problem = REGRESSIONS[name]
    input, offset, mask, grad_output = _arrays(problem)
    _, forward = driver.run(False, problem.params, [input, offset, mask], [grad_output.shape], device)
    assert forward["stores_min"] == forward["stores_max"] == 1
    _, backward = driver.run(True, problem.params, [input, offset, mask, grad_output],
                             [input.shape, offset.shape, mask.shape], device)
    assert backward["stores_min"] == backward["stores_max"] == 1


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("plan", PLANS)
def test_the_plans_unified_buffer_is_what_the_kernel_allocates(driver, plan, backward):
    problem = REGRESSIONS["declared_dtypes_nonsquare"]
    input, offset, mask, grad_output = _arrays(problem)
    device = PLANS[plan]
    tensors, shapes = ([input, offset, mask, grad_output], [input.shape, offset.shape, mask.shape]) if backward else \
        ([input, offset, mask], [grad_output.shape])
    _, counters = driver.run(backward, problem.params, tensors, shapes, device)
    chosen = emulated.tiling.plan(*offset.shape[:3], problem.params, backward=backward,
                                  vector_cores=device.vector_cores, ub_capacity=device.ub_capacity)
    assert counters["ub_bytes"] == emulated.tiling.ub_bytes(chosen.block_pixels, problem.params, backward)


@pytest.mark.parametrize("plan", PLANS)
def test_a_point_costs_at_most_two_copies_each_way_and_no_barrier(driver, plan):
    """The design's figures: a point's 2x2 window arrives in at most two copies (one per image row) and its
    input gradient leaves in at most two; beyond them a tile copies its offsets and masks in (and backward
    grad_output) and its results out once; the only PipeBarrier is each core's last."""
    problem = REGRESSIONS["padding_order"]
    input, offset, mask, grad_output = _arrays(problem)
    device = PLANS[plan]
    points = offset.size // 2
    for backward in (False, True):
        tensors, shapes = ([input, offset, mask, grad_output], [input.shape, offset.shape, mask.shape]) if backward \
            else ([input, offset, mask], [grad_output.shape])
        _, counts = driver.run(backward, problem.params, tensors, shapes, device)
        chosen = emulated.tiling.plan(*offset.shape[:3], problem.params, backward=backward,
                                      vector_cores=device.vector_cores, ub_capacity=device.ub_capacity)
        assert counts["copies_in"] <= 2 * points + (3 if backward else 2) * chosen.tiles
        if backward:
            assert counts["copies_out"] <= 2 * points + 2 * chosen.tiles
        else:
            assert counts["copies_out"] == chosen.tiles
        assert counts["barriers"] == chosen.blocks


def test_a_one_point_kernel_copies_each_pixels_group_run(driver):
    """A 1x1 window with zero offsets and unit masks reads ((n*H + r)*W + c)*C + g*D: the input itself."""
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=2, group_channels=3)
    input, offset, mask, _ = _arrays(Problem(1, 2, 2, params, offset_kind="zero"))
    (output,), _ = driver.run(False, params, [input, offset, np.ones_like(mask)], [input.shape],
                              emulated.DEVICE_910B3)
    np.testing.assert_array_equal(output, input)


@pytest.mark.parametrize("block_pixels, blocks, message", [
    (0, 1, "block_pixels=0 must lie in [1, "),
    (10**6, 1, "block_pixels=1000000 must lie in [1, "),
    (1, 0, "blocks=0 must lie in [1, 65535]"),
    (1, 70000, "blocks=70000 must lie in [1, 65535]"),
])
def test_the_host_checks_refuse_a_bad_tiling_before_launching(driver, block_pixels, blocks, message):
    problem = REGRESSIONS["padding_order"]
    input, offset, mask, grad_output = _arrays(problem)
    with pytest.raises(emulated.EmulationFault, match=message.replace("[", r"\[")):
        driver.run(False, problem.params, [input, offset, mask], [grad_output.shape], emulated.DEVICE_910B3,
                   block_pixels=block_pixels, blocks=blocks)


def test_the_host_checks_refuse_a_tile_too_large_for_the_unified_buffer(driver):
    params = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=512)
    problem = Problem(1, 64, 64, params)
    input, offset, mask, grad_output = _arrays(problem)
    with pytest.raises(emulated.EmulationFault, match="bytes of unified buffer; a 910B vector core has 196608"):
        driver.run(False, params, [input, offset, mask], [grad_output.shape], emulated.DEVICE_910B3,
                   block_pixels=4096, blocks=1)


def test_the_emulated_unified_buffer_is_the_plans_budget(driver):
    """A plan made for the 910B3's buffer (one core: one tile as large as it allows) fails on a 12 KB one."""
    params = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=16)
    input, offset, mask, grad_output = _arrays(Problem(1, 32, 32, params))
    plan = emulated.tiling.plan(1, 32, 32, params, vector_cores=1)
    with pytest.raises(emulated.EmulationFault, match="InitBuffer of .* overflows the 12288-byte unified buffer"):
        driver.run(False, params, [input, offset, mask], [grad_output.shape], emulated.SMALL_DEVICE,
                   block_pixels=plan.block_pixels, blocks=plan.blocks)


# Kernel bugs planted into the source: (what it is, text in dcnv3_kernel.h, its replacement). Each must make
# the emulated kernel fail (a fault of the emulated API, or a parity failure) on some regression problem.
PLANTED_BUGS = [
    ("dx and dy swapped", "offsets.GetValue(k * offsetRun + 2 * p),\n                                  "
     "offsets.GetValue(k * offsetRun + 2 * p + 1));",
     "offsets.GetValue(k * offsetRun + 2 * p + 1),\n                                  "
     "offsets.GetValue(k * offsetRun + 2 * p));"),
    ("unified-buffer stride of one block too many", "(stride - length) * 4, 0, 0};", "(stride - length) * 4, 1, 0};"),
    ("window summed without waiting for its copy", "Handoff<AscendC::HardEvent::MTE2_V>(slot);", ""),
    ("window slot not advanced with its event", "windowBuf.Get<float>()[slot * 4 * run]", "windowBuf.Get<float>()[0]"),
    ("gradients stored without waiting for the scalar unit", "Handoff<AscendC::HardEvent::S_MTE3>(TILE_EVENT);", ""),
    ("atomic add removed", "AscendC::SetAtomicAdd<float>();", ""),
    ("atomic add left on", "AscendC::SetAtomicNone();", ""),
    ("value and derivatives buffer one run short", "pipe.InitBuffer(sampledBuf, 3 * run * 4);",
     "pipe.InitBuffer(sampledBuf, 2 * run * 4);"),
    ("floor truncates", "return static_cast<float>(truncated) > value ? truncated - 1 : truncated;", "return truncated;"),
    ("last column let through", "uint32_t last = s.x0 + 1 < static_cast<int32_t>(g.width) ? 1 : 0;",
     "uint32_t last = s.x0 + 1 <= static_cast<int32_t>(g.width) ? 1 : 0;"),
    ("group offset dropped", "* channels + group * g.groupChannels;", "* channels;"),
    ("accumulator not zeroed", "AscendC::Duplicate(accumulator, 0.0f, t.count * run);", ""),
    ("dots of points outside the image not zeroed", "AscendC::Duplicate(dots, 0.0f, t.count * dotsRun);", ""),
    ("offset gradients' dx and dy dots swapped", "scaled * sums[2]);", "scaled * sums[1]);"),
    ("channel sum one channel short", "uint32_t mask = chunks == 1 ? g.groupChannels : REDUCE_FLOATS;",
     "uint32_t mask = chunks == 1 ? g.groupChannels - 1 : REDUCE_FLOATS;"),
    ("short last tile not shortened", "count = g.pixels - first < g.blockPixels ? g.pixels - first : g.blockPixels;",
     "count = g.blockPixels;"),
    ("remove_center ignored", "((g.removeCenter != 0 && point >= centre) ? 1 : 0)", "0"),
]


def planted(original: str, replacement: str) -> str:
    source = emulated.KERNEL_HEADER.read_text()
    assert original in source, f"the planted bug's text is no longer in the kernel: {original!r}"
    return source.replace(original, replacement, 1)


@pytest.mark.parametrize("original, replacement", [bug[1:] for bug in PLANTED_BUGS], ids=[bug[0] for bug in PLANTED_BUGS])
def test_a_planted_bug_fails(original, replacement):
    mutant = emulated.Driver(emulated.build_driver(planted(original, replacement)))
    caught = []
    for plan in PLANS.values():
        for name, problem in REGRESSIONS.items():
            try:
                assert_matches_reference(emulated.implementation(mutant, plan), problem, torch.float32)
            except (AssertionError, emulated.EmulationFault) as failure:
                caught.append(f"{name}: {failure}")
    assert caught, "the emulated kernel passed every regression problem with the bug planted"


# SetFlag/WaitFlag must pair up: each mutant breaks one pairing rule of SetFlag-WaitFlag.md and must fail naming it.
@pytest.mark.parametrize("original, replacement, message", [
    ("        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(0);\n        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(1);",
     "        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(0);", "ended with a flag set that no WaitFlag took"),
    ("        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);\n        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(1);",
     "        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);", "WaitFlag on event id 1 that no SetFlag set before it"),
    ("AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);", "AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);\n"
     "        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);", "SetFlag on event id 0 that is already set"),
    ("AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);", "AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(8);",
     "SetFlag: event id 8 outside \\[0, 7\\]"),
], ids=["left set", "never set", "set twice", "id out of range"])
def test_unpaired_flags_are_caught(original, replacement, message):
    mutant = emulated.Driver(emulated.build_driver(planted(original, replacement)))
    problem = REGRESSIONS["padding_order"]
    input, offset, mask, grad_output = _arrays(problem)
    with pytest.raises(emulated.EmulationFault, match=message):
        mutant.run(False, problem.params, [input, offset, mask], [grad_output.shape], emulated.DEVICE_910B3)


@pytest.mark.parametrize("group_channels", [64, 65, 71])
def test_channel_sums_span_whole_reduce_sums_64_float_repeats(driver, group_channels):
    """D = 64 is one WholeReduceSum repeat with a full mask; D > 64 sums zero-padded runs of 64 in two."""
    problem = Problem(1, 4, 5, DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=2, group_channels=group_channels))
    assert_matches_reference(emulated.implementation(driver, emulated.SMALL_DEVICE), problem, torch.float32)


def test_a_copy_outside_global_memory_is_caught(driver):
    """A window row's copy one float too long reads past the input on its last pixel, although the numbers
    stay right (Axpy uses D floats): the emulator bounds every copy by the buffers the driver registered."""
    overread = planted("inputGm[rows[r].start], rows[r].pixels, g.groupChannels,",
                       "inputGm[rows[r].start], rows[r].pixels, g.groupChannels + 1,")
    mutant = emulated.Driver(emulated.build_driver(overread))
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=2, group_channels=4)
    input, offset, mask, _ = _arrays(Problem(1, 3, 3, params, offset_kind="zero"))
    with pytest.raises(emulated.EmulationFault, match="DataCopyPad in: 20 bytes of global memory outside every buffer"):
        mutant.run(False, params, [input, offset, mask], [input.shape], emulated.DEVICE_910B3)


def _sanitizer_preload() -> str | None:
    """libasan first, then libstdc++ (ASan intercepts C++ throws only where libstdc++ is loaded at start)."""
    paths = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
             for name in ("libasan.so", "libstdc++.so")]
    return " ".join(paths) if all(os.path.isabs(p) and Path(p).exists() for p in paths) else None


# A forward and backward of every regression problem, through an AddressSanitizer build of the driver.
ASAN_RUN = """
import sys, torch
import emulated_ascendc as emulated
from parity.compare import assert_matches_reference
from parity.regressions import REGRESSIONS
impl = emulated.implementation(emulated.Driver(sys.argv[1]), emulated.SMALL_DEVICE)
for problem in REGRESSIONS.values():
    assert_matches_reference(impl, problem, torch.float32)
"""


def test_the_kernel_and_the_emulator_run_clean_under_address_sanitizer():
    preload = _sanitizer_preload()
    if preload is None:
        pytest.skip("g++ has no AddressSanitizer runtime (libasan.so) here")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "LD_PRELOAD": preload, "ASAN_OPTIONS": "detect_leaks=0",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    library = emulated.build_driver(sanitize=True)
    result = subprocess.run([sys.executable, "-c", ASAN_RUN, str(library)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AddressSanitizer" not in result.stderr
