from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

import impls
from impls import cli, devices, registry
from parity import gate, runner
from parity.operators import OPERATORS
from parity.regressions import REGRESSIONS
from parity.thresholds import Bound, Thresholds

DCNV3 = OPERATORS["dcnv3"]


def test_gate_passes_writes_csv_and_markdown(tmp_path, capsys):
    # The format on the baseline alone: nox -s tests runs the gate over every implementation.
    status = gate.main(["--device", "cpu", "--impl", "grid_sample", "--examples", "3", "--seed", "7",
                        "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "parity.csv")
    assert {"implementation", "device", "dtype", "quantity", "case", "max_abs_diff", "mean_abs_diff", "max_rel_diff",
            "baseline_max_abs_diff", "baseline_mean_abs_diff", "bound", "mean_bound", "ceiling", "rule", "run_spread",
            "pass"} <= set(rows.columns)
    assert set(rows["quantity"]) == {"output", "grad_input", "grad_offset", "grad_mask"}
    assert set(rows["dtype"]) == {"float64", "float32", "float16", "bfloat16"}
    assert rows["case"].nunique() == len(REGRESSIONS) + 3
    assert rows["pass"].all() and (rows["max_abs_diff"] <= rows["bound"]).all() and (rows["bound"] <= rows["ceiling"]).all()
    # The baseline checked against itself: its errors are its bounds' measure, and k, m >= 1.
    assert (rows["max_abs_diff"] == rows["baseline_max_abs_diff"]).all()
    assert set(rows.dropna(subset=["run_spread"])["problem"]) == {REGRESSIONS[DCNV3.spread_case].label()}
    report = (tmp_path / "parity.md").read_text()
    assert "PASS" in report and report in capsys.readouterr().out


def test_gate_sweep_is_seeded():
    assert runner.sweep(5, seed=3) == runner.sweep(5, seed=3)
    assert runner.sweep(5, seed=3) != runner.sweep(5, seed=4)


def test_gate_fails_when_a_bound_is_exceeded(tmp_path):
    loose = "{ ceiling = 1, floor = 1, mean_floor = 1 }"
    strict = tmp_path / "strict.toml"
    strict.write_text("[rule]\nk = 1\nm = 1\n" + "".join(
        f"[{d}]\noutput = {{ ceiling = 0.0, floor = 0.0, mean_floor = 0.0 }}\ngrad_input = {loose}\n"
        f"grad_offset = {loose}\ngrad_mask = {loose}\n" for d in ("float64", "float32", "float16", "bfloat16")))
    assert gate.main(["--device", "cpu", "--impl", "cpu_kernel", "--dtype", "float32", "--examples", "1",
                      "--thresholds", str(strict)]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--impl", "nope"], "unknown implementation(s) nope"),
    (["--impl", "reference"], "reference is the ground truth"),
    (["--device", "npu"], "device 'npu' is not usable here: no NPU"),
    (["--device", "tpu"], "unknown device type 'tpu'"),
])
def test_bad_usage_exits_2_with_a_sentence(argv, message, capsys):
    if argv == ["--device", "npu"] and "no NPU" not in str(devices.unavailable_reason("npu")):
        pytest.skip("an NPU is present here")
    assert gate.main(argv + ["--examples", "0"]) == 2
    assert message in capsys.readouterr().err


def test_bad_argument_exits_2():
    result = subprocess.run([sys.executable, "-m", "parity", "--examples", "-1"], capture_output=True, text=True)
    assert result.returncode == 2 and "--examples must be >= 0" in result.stderr


def test_overrides_take_precedence(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[rule]\nk = 4\nm = 3\n[float32]\noutput = { ceiling = 1e-4, floor = 1e-5, mean_floor = 1e-6, m = 2 }\n"
                    "[overrides.fancy.float32]\noutput = { k = 8, ceiling = 3e-4 }\n")
    thresholds = Thresholds.load(path)
    assert thresholds.get("fancy", torch.float32, "output") == Bound(k=8, m=2, floor=1e-5, mean_floor=1e-6, ceiling=3e-4)
    assert thresholds.get("grid_sample", torch.float32, "output") == Bound(k=4, m=2, floor=1e-5, mean_floor=1e-6, ceiling=1e-4)
    with pytest.raises(KeyError, match=r"no floor, mean_floor, ceiling for \[float32\] grad_mask"):
        thresholds.get("grid_sample", torch.float32, "grad_mask")


@pytest.mark.parametrize("max_abs, mean_abs, passed, rule", [
    (3.9e-5, 1e-7, True, "k x baseline"),    # under 4 x the baseline's 1e-5
    (4.1e-5, 1e-7, False, "k x baseline"),
    (3.9e-5, 3.1e-6, False, "k x baseline"),  # the mean over 3 x the baseline's 1e-6
])
def test_the_per_case_rule(max_abs, mean_abs, passed, rule):
    bound = Bound(k=4, m=3, floor=1e-6, mean_floor=1e-8, ceiling=1e-4)
    limits = bound.judge(max_abs, mean_abs, baseline_max=1e-5, baseline_mean=1e-6)
    assert (limits.passed, limits.rule, limits.max_bound, limits.mean_bound) == (passed, rule, 4e-5, 3e-6)


def test_floors_cover_an_exact_baseline_and_the_ceiling_caps_everything():
    bound = Bound(k=4, m=3, floor=1e-6, mean_floor=1e-8, ceiling=1e-4)
    exact = bound.judge(9e-7, 9e-9, baseline_max=0.0, baseline_mean=0.0)
    assert exact.passed and exact.rule == "floor" and not bound.judge(2e-6, 0.0, 0.0, 0.0).passed
    capped = bound.judge(5e-5, 0.0, baseline_max=1e-4, baseline_mean=0.0)
    assert capped.max_bound == 1e-4 and capped.rule == "ceiling" and not bound.judge(2e-4, 0.0, 1e-4, 0.0).passed
    raised = bound.judge(5e-5, 1.0, baseline_max=float("nan"), baseline_mean=float("nan"))
    assert raised.passed and raised.rule == "ceiling (the baseline raised)"


def test_run_to_run_spread_is_exactly_zero_for_cpu_kernel_and_shows_a_nondeterministic_port(several_threads):
    case = [REGRESSIONS[DCNV3.spread_case]]
    exact = runner.run([impls.get("cpu_kernel")], list(cli.DTYPES.values()), case, torch.device("cpu"),
                     Thresholds.load(), progress=False, isolate=False)
    assert len(exact) == 4 * 4 and (exact["run_spread"] == 0).all()

    def jittery(input, offset, mask, params):
        """grid_sample plus an ulp-sized random term: what an atomic-add backward looks like from outside."""
        output = impls.get("grid_sample").fn(input, offset, mask, params)
        return output + 1e-12 * torch.rand_like(output)

    port = registry.register("jittery")(jittery)
    try:
        spread = runner.run([port], [torch.float64], case, torch.device("cpu"), Thresholds.load(), progress=False,
                          isolate=False).set_index("quantity")["run_spread"]
    finally:
        registry.remove("jittery")
    assert 0 < spread["output"] <= 1e-12 and spread["grad_input"] == 0


def test_a_kernel_on_the_default_stream_fails_the_side_stream_case():
    """On CUDA: inputs written on the current (side) stream after 5 ms of work there are still NaN when
    a kernel launched on the default stream reads them."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the CPU has no streams, and the emulated NPU runs every stream in order")

    def default_stream(input, offset, mask, params):
        with torch.cuda.stream(torch.cuda.default_stream(input.device)):
            return impls.get("grid_sample").fn(input, offset, mask, params)

    port = registry.register("default_stream")(default_stream)
    try:
        rows = runner.run([port], [torch.float32], [REGRESSIONS[DCNV3.stream_case]], torch.device("cuda"),
                        Thresholds.load(), progress=False, isolate=False)
    finally:
        registry.remove("default_stream")
    assert rows.loc[~rows["side_stream"], "pass"].all() and not rows.loc[rows["side_stream"], "pass"].any()
