"""The Ascend C kernel's tiling and loops, modelled in NumPy (impls/ascendc/tiling.py), against the reference.

The device code is not compiled here; these tests pin what it mirrors: the
block partitioning (every output element written exactly once, by one core),
tails, the bounds of every global-memory copy and the channel runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from bench.shapes import SUITES
from impls import DCNv3Params, devices
from impls.ascendc import tiling
from impls.registry import Implementation
from parity.compare import assert_matches_reference
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.strategies import problems

# Few cores and a small UB: several tiles per core, short last tiles, more than one tile per group.
SMALL_DEVICE = dict(vector_cores=3, ub_capacity=tiling.UB_RESERVED_BYTES + 4096)


def _numpy(tensor):
    return tensor.detach().to(torch.float32).numpy()


def modelled_kernel(**device) -> Implementation:
    class Model(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input, offset, mask, params):
            ctx.save_for_backward(input, offset, mask)
            ctx.params = params
            batch, out_h, out_w, _ = offset.shape
            plan = tiling.plan(batch, out_h, out_w, params, **device)
            output, _ = tiling.forward(_numpy(input), _numpy(offset), _numpy(mask), params, plan)
            return torch.from_numpy(output.copy())

        @staticmethod
        def backward(ctx, grad_output):
            input, offset, mask = ctx.saved_tensors
            batch, out_h, out_w, _ = offset.shape
            plan = tiling.plan(batch, out_h, out_w, ctx.params, backward=True, **device)
            grads, _ = tiling.backward(*(_numpy(t) for t in (input, offset, mask, grad_output)), ctx.params, plan)
            return (*(torch.from_numpy(g.copy()) for g in grads), None)

    return Implementation(name="ascendc-model", fn=Model.apply, dtypes=frozenset({torch.float32}),
                          device_types=("cpu",))


@pytest.mark.parametrize("device", [{}, SMALL_DEVICE], ids=["910B3", "3-cores-4KB"])
@pytest.mark.parametrize("name", REGRESSIONS)
def test_model_matches_reference_on_regressions(name, device):
    assert_matches_reference(modelled_kernel(**device), REGRESSIONS[name], torch.float32)


@settings(max_examples=15)
@given(problem=problems(smooth=True))
def test_model_matches_reference_on_drawn_problems(problem):
    assert_matches_reference(modelled_kernel(**SMALL_DEVICE), problem, torch.float32)


@pytest.mark.parametrize("vector_cores, ub_capacity", [(40, tiling.UB_BYTES), (3, tiling.UB_RESERVED_BYTES + 4096),
                                                       (7, tiling.UB_RESERVED_BYTES + 1000)])
@pytest.mark.parametrize("name", ["padding_order", "declared_dtypes_nonsquare", "far_outside"])
def test_every_output_element_is_written_exactly_once(name, vector_cores, ub_capacity):
    problem = REGRESSIONS[name]
    input, offset, mask, grad_output = (_numpy(t) for t in problem.tensors(torch.float32))
    batch, out_h, out_w, _ = offset.shape
    forward_plan = tiling.plan(batch, out_h, out_w, problem.params, vector_cores=vector_cores,
                               ub_capacity=ub_capacity)
    _, output = tiling.forward(input, offset, mask, problem.params, forward_plan)
    assert (output.writes == 1).all()
    backward_plan = tiling.plan(batch, out_h, out_w, problem.params, backward=True,
                                vector_cores=vector_cores, ub_capacity=ub_capacity)
    _, (_, grad_offset, grad_mask) = tiling.backward(input, offset, mask, grad_output, problem.params,
                                                     backward_plan)
    assert (grad_offset.writes == 1).all() and (grad_mask.writes == 1).all()


def test_tiles_cover_each_group_once_with_a_short_tail():
    plan = tiling.Plan(pixels=10, groups=2, block_pixels=4, blocks=3)
    covered = {}
    for block in range(plan.blocks):
        for tile in plan.tiles_of(block):
            group, first, count = plan.tile(tile)
            for pixel in range(first, first + count):
                covered[group, pixel] = covered.get((group, pixel), 0) + 1
    assert covered == {(g, p): 1 for g in range(2) for p in range(10)}
    assert [plan.tile(t)[2] for t in range(plan.tiles)] == [4, 4, 4, 4, 2, 2]


@pytest.mark.parametrize("shape", SUITES["internimage"], ids=lambda s: s.name)
@pytest.mark.parametrize("backward", [False, True])
def test_internimage_shapes_fit_the_910b_unified_buffer_and_keep_every_core_busy(shape, backward):
    out_h, out_w = shape.output_size
    plan = tiling.plan(shape.batch, out_h, out_w, shape.params, backward=backward)
    assert tiling.ub_bytes(plan.block_pixels, shape.params, backward) <= tiling.UB_BYTES - tiling.UB_RESERVED_BYTES
    assert plan.blocks == min(plan.tiles, tiling.VECTOR_CORES)
    # Every core busy in every round: no short last round of tiles.
    assert tiling.core_efficiency(plan.tiles, tiling.VECTOR_CORES) >= 0.95


def test_a_group_too_wide_for_the_unified_buffer_is_a_value_error():
    params = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=1, group_channels=8192)
    with pytest.raises(ValueError, match="group_channels=8192"):
        tiling.plan(1, 4, 4, params, backward=True)


def test_a_copy_outside_global_memory_is_caught():
    memory = tiling.GlobalMemory(np.zeros(10), "input")
    with pytest.raises(IndexError, match="input: copy"):
        memory.read(8, 1, 4, 0)
    with pytest.raises(IndexError):
        memory.read(0, 3, 4, 4)


def test_channel_runs_sit_at_the_group_offset_of_each_pixel():
    """One corner read per in-bounds corner, D floats at ((n*H + r)*W + c)*C + g*D."""
    params = DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, group=2, group_channels=3)
    problem = Problem(1, 2, 2, params, offset_kind="zero")
    input, offset, mask, _ = (_numpy(t) for t in problem.tensors(torch.float32))
    mask[:] = 1
    output, _ = tiling.forward(input, offset, mask, params, tiling.plan(1, 2, 2, params))
    np.testing.assert_array_equal(output, input)


def test_the_build_names_what_is_missing_off_an_ascend_host(monkeypatch, capsys):
    from impls.ascendc import __main__ as build

    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    if devices.torch_npu_import_error() is None:
        pytest.skip("torch_npu imports here")
    assert build.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("build-ascendc: cannot build the Ascend C kernel here: missing ")
    assert "ASCEND_HOME_PATH is unset" in err and "torch_npu not importable" in err


@pytest.mark.parametrize("version, config, needs", [
    ("8.3.RC1", True, ["CANN >= 9.1.0 (found 8.3.RC1)"]),
    ("9.1.0", False, ["asc-config.cmake for find_package(ASC)"]),
    ("10.0.RC2", True, []),
    (None, True, ["CANN >= 9.1.0 (no version in "]),
])
def test_the_build_checks_the_cann_version_and_find_package_asc(tmp_path, monkeypatch, version, config, needs):
    from impls.ascendc import __main__ as build

    monkeypatch.delenv("CMAKE_PREFIX_PATH", raising=False)
    (tmp_path / "compiler").mkdir()
    if version is not None:
        (tmp_path / "compiler" / "version.info").write_text(f"Version={version}\n")
    if config:
        (tmp_path / "lib64" / "cmake").mkdir(parents=True)
        (tmp_path / "lib64" / "cmake" / "asc-config.cmake").write_text("")
    found = build._cann_needs(tmp_path)
    assert len(found) == len(needs) and all(f.startswith(n) for f, n in zip(found, needs))


def test_an_unbuilt_kernel_is_unavailable_with_the_command_that_builds_it(monkeypatch, tmp_path):
    from impls import ascendc

    monkeypatch.setenv("DCNV3_ASCENDC_LIBRARY", str(tmp_path / "libdcnv3_ascendc.so"))
    assert "run nox -s build-ascendc on an Ascend host" in ascendc.load_error.__wrapped__()


def test_a_library_that_does_not_load_reports_the_loader_error(monkeypatch, tmp_path):
    from impls import ascendc

    broken = tmp_path / "libdcnv3_ascendc.so"
    broken.write_text("not a shared object")
    monkeypatch.setenv("DCNV3_ASCENDC_LIBRARY", str(broken))
    assert ascendc.load_error.__wrapped__().startswith(f"the Ascend C kernel at {broken} did not load: ")


def test_core_efficiency_counts_idle_cores_and_short_rounds():
    assert tiling.core_efficiency(40, 40) == 1.0
    assert tiling.core_efficiency(48, 40) == 0.6
    assert tiling.core_efficiency(16, 40) == 0.4
