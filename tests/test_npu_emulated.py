"""The harness's NPU code on the emulated NPU (tests/emulated_npu), and the emulation's own behaviour.

`nox -s npu-emulated` runs this file with the emulation on PYTHONPATH and `--device npu`; without an
NPU, emulated or real, every test here skips saying so. On a real Ascend host they run against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import impls
from bench import instruments
from impls import dcnv2_mapping, devices, msda
from impls.registry import Implementation, UnsupportedInput
from parity import compare, gate, runner
from parity.operators import OPERATORS
from parity.msda.regressions import REGRESSIONS as MSDA_REGRESSIONS
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds

DCNV3 = OPERATORS["dcnv3"]

ROOT = Path(__file__).resolve().parent.parent
EMULATION = ROOT / "tests" / "emulated_npu"
EMULATED = "torch_npu" in sys.modules and getattr(sys.modules["torch_npu"], "__version__", "").endswith("+emulated")

pytestmark = pytest.mark.skipif(
    devices.unavailable_reason("npu") is not None,
    reason="needs an NPU: nox -s npu-emulated runs these on the emulated one",
)
emulation_only = pytest.mark.skipif(not EMULATED, reason="checks the emulation itself")
NPU = torch.device("npu") if devices.unavailable_reason("npu") is None else None


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(EMULATION), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environment)


@emulation_only
def test_views_share_storage_and_keep_their_layout():
    base = torch.arange(12.0).reshape(3, 4).to(NPU)
    column = base.t()[1:3]
    assert column.device.type == "npu" and column.stride() == (1, 4) and not column.is_contiguous()
    column.mul_(10)
    expected = torch.arange(12.0).reshape(3, 4)
    expected[:, 1:3] *= 10
    torch.testing.assert_close(base.cpu(), expected)


@emulation_only
def test_in_place_and_out_return_the_tensor_written():
    tensor = torch.ones(4, device=NPU)
    assert tensor.add_(1) is tensor
    out = torch.empty(4, device=NPU)
    assert torch.mul(tensor, 3, out=out) is out
    assert out.cpu().tolist() == [6.0] * 4


@emulation_only
def test_grad_accumulates_on_the_device():
    weight = torch.full((2,), 2.0, device=NPU, requires_grad=True)
    for _ in range(2):
        (weight * weight).sum().backward()
    assert weight.grad.device.type == "npu" and weight.grad.cpu().tolist() == [8.0, 8.0]


@emulation_only
def test_custom_ops_see_npu_tensors():
    seen = []

    @torch.library.custom_op("emulated_npu_test::double", mutates_args=())
    def double(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device.type)
        return x * 2

    assert double(torch.ones(3, device=NPU)).cpu().tolist() == [2.0] * 3
    assert seen == ["npu"]


@emulation_only
def test_a_cpu_tensor_in_an_npu_operator_is_an_error_as_on_a_device():
    with pytest.raises(RuntimeError, match="same device"):
        torch.ones(3, device=NPU) + torch.ones(3)
    assert (torch.ones(3, device=NPU) + torch.tensor(1.0)).device.type == "npu"


@emulation_only
def test_float64_casts_give_float32_as_torch_npu_does():
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert torch.ones(2, device=NPU).to(torch.float64).dtype == torch.float32


@emulation_only
def test_hf32_keeps_eleven_mantissa_bits_rounding_to_nearest_even():
    import torch_npu

    ulp = 2.0**-11
    values = torch.tensor([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + 3 * ulp / 2), 1 + ulp / 4, float("inf")])
    expected = torch.tensor([1.0, 1 + 2 * ulp, -(1 + 2 * ulp), 1.0, float("inf")])
    assert torch.equal(torch_npu._round_to_hf32(values), expected)


def test_the_gate_does_not_run_float64_where_the_device_casts_it_away():
    usable, skipped = runner.usable_dtypes([torch.float64, torch.float32], NPU)
    if devices.dtype_unavailable_reason(NPU, torch.float64) is None:
        pytest.skip("this NPU computes in float64")
    assert usable == [torch.float32]
    assert skipped == {"float64": "npu has no torch.float64 arithmetic: .to(torch.float64) gives torch.float32 there"}


@emulation_only
@pytest.mark.parametrize("command", ["parity", "bench"])
def test_asking_only_for_float64_on_the_npu_is_a_usage_error(command, tmp_path):
    from bench import run as bench_run

    main = gate.main if command == "parity" else bench_run.main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--device", "npu", "--dtype", "float64", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def _npu_deform_conv_with_hf32_left_on() -> Implementation:
    """npu_deform_conv as it was before the fix: torch_npu's kernel with the caller's HF32 setting."""
    import torch_npu

    def call(input, offset, mask, params):
        arguments = dcnv2_mapping.npu_arguments(input, offset, mask, params)
        arguments["input"] = arguments["input"].contiguous()
        return dcnv2_mapping.from_nchw(torch_npu.npu_deformable_conv2d(*arguments.values())[0])

    return Implementation(name="npu_deform_conv", fn=call, dtypes=frozenset({torch.float32}), device_types=("npu",))


def _gate_rows(implementation):
    # In this process: allow_hf32 is this process's setting, and the HF32 port is registered nowhere.
    cases = [REGRESSIONS["padding_order"], REGRESSIONS["declared_dtypes_nonsquare"]]
    return runner.run([implementation], [torch.float32], cases, NPU, Thresholds.load(), isolate=False)


def test_hf32_left_on_fails_the_float32_gate_and_npu_deform_conv_turns_it_off():
    torch.npu.conv.allow_hf32 = True  # torch_npu's default
    assert not _gate_rows(_npu_deform_conv_with_hf32_left_on())["pass"].all()
    rows = _gate_rows(impls.get("npu_deform_conv"))
    assert rows["pass"].all(), rows[["quantity", "max_abs_diff", "bound", "rule"]]


def test_the_gate_runs_a_case_with_its_inputs_written_on_a_side_stream():
    """What the emulation shows: the side-stream case runs and passes. What it cannot: a kernel that
    ignores the current stream, since the emulated device runs every operator in issue order."""
    rows = runner.run([impls.get("grid_sample")], [torch.float32], list(REGRESSIONS.values()), NPU, Thresholds.load())
    on_side_stream = rows[rows["side_stream"]]
    assert set(on_side_stream["case"]) == {list(REGRESSIONS).index(DCNV3.stream_case)} and len(on_side_stream) == 4
    assert rows["pass"].all()


@pytest.mark.parametrize("callers_setting", [True, False])
def test_npu_deform_conv_gives_the_callers_hf32_setting_back(callers_setting):
    torch.npu.conv.allow_hf32 = callers_setting
    problem = REGRESSIONS["padding_order"]
    seen = []
    original = torch.nn.functional.conv2d

    def spy(*args, **kwargs):
        seen.append(torch.npu.conv.allow_hf32)
        return original(*args, **kwargs)

    torch.nn.functional.conv2d = spy
    try:
        compare.evaluate(impls.get("npu_deform_conv"), problem, torch.float32, NPU)
    finally:
        torch.nn.functional.conv2d = original
        settings_after = torch.npu.conv.allow_hf32
        torch.npu.conv.allow_hf32 = True
    assert settings_after is callers_setting
    if EMULATED:
        assert seen and not any(seen)


def test_npu_deform_conv_says_when_torch_npu_lacks_the_kernel(monkeypatch):
    import torch_npu

    from impls import npu_deform_conv

    monkeypatch.delattr(torch_npu, "npu_deformable_conv2d")
    assert npu_deform_conv._requires(NPU).endswith("has no npu_deformable_conv2d")


def test_compiled_says_when_torchair_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchair" else real(name, *a))
    reason = devices._compile_unavailable_reason.__wrapped__("npu")
    assert reason == "torch.compile on npu needs torchair (the vendor's compile backend), not installed"


def test_npu_deform_conv_compiles_per_shape():
    assert impls.get("npu_deform_conv").compiles_per_shape


@pytest.mark.parametrize("name", ["grid_sample", "optimized", "npu_deform_conv"])
def test_an_empty_batch_gives_empty_outputs_and_gradients_on_the_npu(name):
    params = impls.DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=2, group_channels=4)
    leaves = [torch.zeros(0, 5, 5, last, device=NPU, requires_grad=True) for last in (8, 36, 18)]
    output = impls.get(name)(*leaves, params)
    grads = torch.autograd.grad(output, leaves, torch.ones_like(output))
    assert output.shape == (0, 5, 5, 8) and output.device.type == "npu"
    assert [g.shape for g in grads] == [t.shape for t in leaves]


def _mx_driving_rows(dtypes=(torch.float32,)):
    return runner.run([msda.get("mx_driving")], list(dtypes), list(MSDA_REGRESSIONS.values()), NPU,
                      Thresholds.load(operator="msda"), progress=False, isolate=False)


def _skip_without_mx_driving():
    reason = msda.get("mx_driving").unavailable_reason(NPU)
    if reason is not None:
        pytest.skip(reason)


def test_mx_driving_passes_inside_its_envelope_and_the_rest_is_unsupported():
    _skip_without_mx_driving()
    rows = _mx_driving_rows((torch.float32, torch.float16))
    judged = rows[rows["unsupported"] == ""]
    x_first = list(MSDA_REGRESSIONS).index("x_first")
    assert set(judged["case"]) == {x_first} and judged["pass"].all(), judged[["quantity", "max_abs_diff", "bound"]]
    assert set(rows["case"]) == set(range(len(MSDA_REGRESSIONS))) and rows["pass"].all()


@emulation_only
def test_a_kernel_reading_y_first_fails_the_x_first_regression(monkeypatch):
    """DrivingSDK's documentation said (y, x) through 2024: a kernel that read it so fails on x_first."""
    monkeypatch.setenv("EMULATED_MX_DRIVING_LAYOUT", "yx")
    rows = _mx_driving_rows()
    failed = rows[~rows["pass"]]
    assert set(failed["case"]) == {list(MSDA_REGRESSIONS).index("x_first")} and len(failed) == 4


def test_mx_driving_refuses_a_call_outside_its_envelope_before_calling_the_kernel(monkeypatch):
    _skip_without_mx_driving()
    import mx_driving

    monkeypatch.setattr(mx_driving, "multi_scale_deformable_attn", None)
    value, locations, weights, _ = MSDA_REGRESSIONS["per_level_split"].tensors(torch.float32, NPU)
    with pytest.raises(UnsupportedInput, match="embed_dims is 3; DrivingSDK documents a multiple of 8"):
        msda.ms_deform_attn(value, *MSDA_REGRESSIONS["per_level_split"].index_tensors(NPU), locations, weights, 64,
                            impl="mx_driving")


def test_mx_driving_says_when_drivingsdk_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "mx_driving", None)
    assert msda.get("mx_driving").unavailable_reason(NPU).startswith("mx_driving (Ascend DrivingSDK) is not installed")


def test_mx_driving_says_when_its_release_lacks_the_operator(monkeypatch):
    _skip_without_mx_driving()
    import mx_driving

    monkeypatch.delattr(mx_driving, "multi_scale_deformable_attn")
    assert msda.get("mx_driving").unavailable_reason(NPU).endswith("has no multi_scale_deformable_attn")


@pytest.mark.parametrize("triton, problems", [
    (impls.get("triton"), [REGRESSIONS["padding_order"], REGRESSIONS["declared_dtypes_nonsquare"]]),
    (msda.get("triton"), [MSDA_REGRESSIONS["per_level_split"], MSDA_REGRESSIONS["x_first"]]),
], ids=["dcnv3", "msda"])
def test_the_triton_kernels_match_the_reference_on_the_npu(triton, problems):
    if triton.unavailable_reason(NPU) is not None:
        pytest.skip(triton.unavailable_reason(NPU))
    for problem in problems:
        compare.assert_matches_reference(triton, problem, torch.float32, NPU)


def test_the_triton_launch_uses_one_program_per_vector_core():
    triton = impls.get("triton")
    if triton.unavailable_reason(NPU) is not None:
        pytest.skip(triton.unavailable_reason(NPU))
    from impls.triton_kernel import kernels

    cores = kernels.triton.runtime.driver.active.utils.get_device_properties(torch.npu.current_device())
    assert kernels._programs(10_000, NPU) == cores["num_vectorcore"]
    assert kernels._programs(3, NPU) == 3


def test_the_ascendc_plan_uses_the_devices_vector_cores(monkeypatch):
    from impls import ascendc

    offset = torch.zeros(1, 56, 56, 4 * 9 * 2, device=NPU)
    scalars = impls.DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=4, group_channels=16).scalars()
    properties = torch.npu.get_device_properties(0)
    assert ascendc._plan(offset, scalars, backward=False).blocks == min(properties.vector_core_num, 40)
    monkeypatch.setattr(torch.npu, "get_device_properties", lambda device=None: type("P", (), {"vector_core_num": 24})())
    assert ascendc._plan(offset, scalars, backward=False).blocks == 24
    monkeypatch.setattr(torch.npu, "get_device_properties", lambda device=None: object())
    assert ascendc._plan(offset, scalars, backward=True).blocks == ascendc.tiling.VECTOR_CORES


def _ascendc():
    """The Ascend C implementation where its library is built: nox -s npu-emulated builds the kernel's
    .asc against the emulated Ascend C API (tests/emulated_ascendc) and points DCNV3_ASCENDC_LIBRARY at it."""
    ascendc = impls.get("ascendc")
    reason = ascendc.unavailable_reason(NPU)
    if reason is not None:
        pytest.skip(reason)
    return ascendc


def test_the_ascendc_kernel_returns_an_empty_batch_without_launching():
    ascendc = _ascendc()
    params = impls.DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=2, group_channels=8)
    input = torch.zeros(0, 5, 5, 16, device=NPU, requires_grad=True)
    offset = torch.zeros(0, 5, 5, 2 * 2 * 9, device=NPU, requires_grad=True)
    mask = torch.zeros(0, 5, 5, 2 * 9, device=NPU, requires_grad=True)
    output = ascendc(input, offset, mask, params)
    assert output.shape == (0, 5, 5, 16) and output.device.type == "npu"
    output.sum().backward()
    assert input.grad.shape == input.shape and offset.grad.shape == offset.shape


@pytest.mark.parametrize("block_pixels, blocks, message", [(0, 1, "block_pixels=0 must lie in"),
                                                            (1, 0, "blocks=0 must lie in"),
                                                            (5, 65536, "blocks=65536 must lie in")])
def test_the_ascendc_host_code_refuses_a_bad_tiling(block_pixels, blocks, message):
    _ascendc()
    params = impls.DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=2, group_channels=8)
    input, offset, mask = (torch.zeros(1, 5, 5, n, device=NPU) for n in (16, 2 * 2 * 9, 2 * 9))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dcnv3_ascendc.forward(input, offset, mask, *params.scalars(), block_pixels, blocks)


def test_compiled_uses_the_vendors_backend_on_the_npu():
    reason = devices.compile_unavailable_reason("npu")
    if reason is not None:
        pytest.skip(reason)
    backend = devices.compile_backend(NPU)
    assert backend != "inductor"
    doubled = torch.compile(lambda x: x * 2, backend=backend)(torch.ones(3))
    assert doubled.tolist() == [2.0] * 3


def test_device_clock_and_peak_memory_on_the_npu():
    timer = instruments.synchronised_timer(NPU)
    assert instruments.elapsed_ms(timer, lambda: torch.ones(1000, device=NPU).sum()) > 0
    with instruments.PeakMemory(NPU) as peak:
        block = torch.ones(2**20, device=NPU)
        del block
    assert peak.bytes >= 4 * 2**20
    assert devices.device_name(NPU).startswith("Ascend")
    assert {"torch", "torch_npu", "cann"} <= set(instruments.versions())
    flush = instruments.cache_flusher(NPU)
    flush()


def test_preflight_reports_the_npu(capsys):
    from bench import preflight

    assert preflight.main(["--device", "npu"]) == 0
    out = capsys.readouterr().out
    assert f"device: npu ({devices.device_name(NPU)})" in out
    assert "torch_npu " in out and "cann " in out
    assert "  npu_deform_conv: runs" in out


@emulation_only
def test_a_torch_npu_that_fails_to_load_breaks_import_torch_and_preflight_says_why_in_one_sentence():
    missing = {"EMULATED_NPU_CANN_MISSING": "1"}
    plain = _run("import torch", **missing)
    assert plain.returncode != 0 and "Failed to load the backend extension: torch_npu" in plain.stderr
    preflight = _run("import sys; from bench import preflight; sys.exit(preflight.main(['--device', 'npu']))", **missing)
    assert preflight.returncode == 1, preflight.stderr
    assert preflight.stderr.count("\n") == 1
    assert preflight.stderr.startswith("bench-npu: no NPU: torch_npu not importable: libhccl.so")
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in preflight.stderr


@emulation_only
def test_torch_npu_without_a_device_is_explained_in_one_sentence():
    result = _run("import sys; from bench import preflight; sys.exit(preflight.main(['--device', 'npu']))",
                  EMULATED_NPU_DEVICES="0")
    assert result.returncode == 1
    assert result.stderr == "bench-npu: no NPU: torch.npu.is_available() is False\n"


@emulation_only
def test_ascend_rt_visible_devices_narrows_the_emulated_host_as_cann_documents():
    counts = {listed: _run("import torch; print(torch.npu.device_count())", EMULATED_NPU_DEVICES="8",
                           ASCEND_RT_VISIBLE_DEVICES=listed).stdout.strip()
              for listed in ("3", "1,2,3", "1, 2,3", "1,3,8", "5,2")}
    assert counts == {"3": "1", "1,2,3": "3", "1, 2,3": "1", "1,3,8": "2", "5,2": "1"}


@emulation_only
def test_the_emulated_host_has_at_most_the_npus_its_device_guard_reports(monkeypatch):
    monkeypatch.setenv("EMULATED_NPU_DEVICES", "9")
    with pytest.raises(ValueError, match="EMULATED_NPU_DEVICES=9: the emulation models hosts of at most 8 NPUs"):
        torch.npu.device_count()


class _IdentityThen(torch.autograd.Function):
    """Identity forward; the backward hands back what `then` makes of the gradient."""

    @staticmethod
    def forward(ctx, tensor, then):
        ctx.then = then
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient):
        return ctx.then(gradient), None


@emulation_only
def test_on_a_host_of_two_npus_the_side_stream_case_runs_on_the_other_and_catches_device_0_ports(monkeypatch):
    """DCNv4#100's kind of port: right on device 0, wrong on another (a scratch buffer on the current
    device, the result or a gradient handed back there). Forward and backward run on npu:1, as the
    emulation's device guard gives the autograd engine a queue per device (tests/emulated_npu/torch_npu);
    its backward thread for npu:1 has npu:1 current, as on a real device, so a scratch buffer on the
    current device is right in a backward."""
    monkeypatch.setenv("EMULATED_NPU_DEVICES", "2")
    base = impls.get("grid_sample").fn

    def scratch_on_the_current_device(input, offset, mask, params):
        output = base(input, offset, mask, params)
        return output + torch.zeros(output.shape, dtype=output.dtype, device="npu")

    def result_on_device_0(input, offset, mask, params):
        return base(input, offset, mask, params).to("npu:0")

    def input_gradient_on_device_0(input, offset, mask, params):
        return base(_IdentityThen.apply(input, lambda gradient: gradient.to("npu:0")), offset, mask, params)

    ports = [Implementation(name, fn, frozenset({torch.float32}), ("npu",)) for name, fn in
             [("right", base), ("scratch_on_the_current_device", scratch_on_the_current_device),
              ("result_on_device_0", result_on_device_0), ("input_gradient_on_device_0", input_gradient_on_device_0)]]
    rows = runner.run(ports, [torch.float32], list(REGRESSIONS.values()), NPU, Thresholds.load(), progress=False,
                      isolate=False)
    on_side_stream = rows[rows["side_stream"]]
    assert on_side_stream["problem"].str.endswith("(side stream of npu:1)").all()
    assert len(on_side_stream) == len(ports) * len(DCNV3.quantities)
    assert rows[~rows["side_stream"]]["pass"].all()
    assert on_side_stream.groupby("implementation")["pass"].all().to_dict() == {
        "right": True, "scratch_on_the_current_device": False, "result_on_device_0": False,
        "input_gradient_on_device_0": False}
    errors = on_side_stream.groupby("implementation")["error"].first()
    assert "found at least two devices, npu:0 and npu:1" in errors["scratch_on_the_current_device"]
    assert "an input on npu:1 gave an output on npu:0" in errors["result_on_device_0"]
    assert "grad_input came back on npu:0 for an input on npu:1" in errors["input_gradient_on_device_0"]


@emulation_only
def test_the_device_guard_gives_each_autograd_thread_its_device(monkeypatch):
    """The backward of a tensor on npu:1 runs on the engine's thread for npu:1, with npu:1 current there;
    the main thread's current device stays what it was."""
    monkeypatch.setenv("EMULATED_NPU_DEVICES", "2")
    seen = []

    def note_the_current_device(gradient):
        seen.append(torch.npu.current_device())
        return gradient

    leaf = torch.ones(3, device="npu:1", requires_grad=True)
    (_IdentityThen.apply(leaf, note_the_current_device) * 2).sum().backward()
    assert seen == [1] and torch.npu.current_device() == 0
    assert leaf.grad.device == torch.device("npu:1") and leaf.grad.cpu().tolist() == [2.0, 2.0, 2.0]


@emulation_only
def test_the_sweep_spread_over_two_npus_is_the_one_device_sweep_row_for_row(tmp_path, monkeypatch):
    pytest.importorskip("xdist", reason="--devices spreads the sweep with pytest-xdist, not installed here")
    options = ["--device", "npu", "--impl", "grid_sample", "optimized", "--dtype", "float32", "--examples", "3"]
    assert gate.main([*options, "--no-isolate", "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("EMULATED_NPU_DEVICES", "2")
    assert gate.main([*options, "--devices", "all", "--out", str(tmp_path / "two")]) == 0
    one, two = (pd.read_csv(tmp_path / run / "parity.csv") for run in ("one", "two"))
    pd.testing.assert_frame_equal(two, one)
    spread_line = (tmp_path / "two" / "parity.md").read_text()
    assert "Spread over npu:0 (" in spread_line and ", npu:1 (" in spread_line


@emulation_only
def test_the_benchmark_spread_over_two_npus_times_each_shape_on_one_device_against_its_baseline(tmp_path, monkeypatch):
    pytest.importorskip("xdist", reason="--devices spreads the benchmark with pytest-xdist, not installed here")
    from bench import run as bench_run
    from bench.shapes import SUITES

    monkeypatch.setenv("EMULATED_NPU_DEVICES", "2")
    assert bench_run.main(["--device", "npu", "--devices", "all", "--suite", "quick", "--impl", "grid_sample",
                           "optimized", "--mode", "forward", "--seconds", "0.01", "--parity-examples", "0",
                           "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert set(rows["device"]) == {"npu:0", "npu:1"} and len(rows) == 2 * len(SUITES["quick"])
    assert (rows.groupby("shape")["device"].nunique() == 1).all()
    baseline = rows[rows["baseline"]].set_index("shape")
    assert (baseline["speedup"] == 1.0).all()
    for row in rows.itertuples():
        assert row.speedup == pytest.approx(baseline.loc[row.shape, "p50_ms"] / row.p50_ms)
