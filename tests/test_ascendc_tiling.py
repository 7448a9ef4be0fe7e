"""The Ascend C kernel's plan (impls/ascendc/tiling.py) and its build and loading off an Ascend host.

The kernel itself runs on the emulated Ascend C API in tests/test_ascendc_emulated.py.
"""

from __future__ import annotations

import pytest

from bench.shapes import SUITES
from impls import DCNv3Params, devices
from impls.ascendc import tiling


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
