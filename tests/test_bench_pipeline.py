"""Smoke run of the main job on the quick suite: structure of every record, never a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import impls
from bench import instruments, timing, traffic
from impls import internimage as models
from bench import profile
from bench.cases import model_runner
from bench.records import TimedCase
from bench.run import main as bench_main
from bench.run import implausible, tidy_rows
from bench.shapes import SUITES, Shape, same_padding_params, internimage, suite
from mutants import offset_pair_swapped
from reports import build as reports_build
from reports.build import main as reports_main
from reports.build import parse_compare_fail


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # Two implementations besides the baseline, which the run adds itself: every implementation goes through
    # the case runner in test_the_backward_mode_can_repeat_its_backward, and compiling one shape per case
    # here took two minutes.
    status = bench_main(["--device", "cpu", "--suite", "quick", "--mode", "forward", "forward+backward",
                         "--impl", "optimized", "cpu_kernel", "--seconds", "0.02", "--min-rounds", "3",
                         "--parity-examples", "2", "--out", str(out)])
    assert status == 0
    return out


def test_run_writes_the_raw_record_and_tidy_rows(quick_run):
    record = json.loads((quick_run / "benchmark.json").read_text())
    assert {"machine_info", "commit_info", "benchmarks"} <= set(record)
    extra = [b["extra_info"] for b in record["benchmarks"]]
    timed = {"grid_sample", "optimized", "cpu_kernel"}
    assert {info["implementation"] for info in extra} == timed
    assert len(extra) == len(timed) * len(SUITES["quick"]) * 2
    for benchmark in record["benchmarks"]:
        info = benchmark["extra_info"]
        assert info["rounds"] >= 3 and info["p20_ms"] <= info["p50_ms"] <= info["p80_ms"]
        assert info["bytes_moved"] > 0 and info["peak_memory_bytes"] >= 0
        # One set of statistics: the record's are pytest-benchmark's rounds.
        assert benchmark["stats"]["rounds"] == info["rounds"]
        assert benchmark["stats"]["median"] * 1e3 == pytest.approx(info["p50_ms"])
    rows = pd.read_csv(quick_run / "results.csv")
    for column in ("implementation", "device", "dtype", "mode", "suite", "shape", "N", "H", "W", "group",
                   "group_channels", "p20_ms", "p50_ms", "p80_ms", "gbps", "fraction_of_peak",
                   "peak_memory_mb", "speedup"):
        assert column in rows.columns, column
    baseline = rows[rows["implementation"] == "grid_sample"]
    assert len(baseline) == len(SUITES["quick"]) * 2 and (baseline["speedup"] == 1.0).all()
    baseline_p50 = {(row.shape, row.mode): row.p50_ms for row in baseline.itertuples()}
    for row in rows[rows["implementation"] != "grid_sample"].itertuples():
        assert row.speedup == pytest.approx(baseline_p50[row.shape, row.mode] / row.p50_ms)
    assert set(rows["mode"]) == {"forward", "forward+backward"}
    assert (quick_run / "parity.csv").exists() and (quick_run / "environment.json").exists()


def test_report_numbers_match_the_csv_and_charts_exist(quick_run):
    assert reports_main([str(quick_run)]) == 0
    summary = (quick_run / "summary.md").read_text()
    rows = pd.read_csv(quick_run / "results.csv")
    for row in rows.itertuples():
        assert f"{row.p50_ms:.3g} ms ({row.speedup:.2f}x)" in summary
    for chart in ("speedup", "latency", "bandwidth"):
        png = quick_run / f"{chart}-float32.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({png.name})" in summary
    assert "## Parity against the float64 reference" in summary and "copy bandwidth measured" in summary
    all_rows = summary[summary.index("## All rows"):]
    assert "fraction_of_peak" in all_rows and "core_share" not in all_rows  # an operator suite's columns


def test_the_report_shows_the_ascend_c_kernels_emulated_counts_where_the_run_has_them(quick_run, tmp_path):
    run = tmp_path / "with-counts"
    shutil.copytree(quick_run, run)
    counts = pd.DataFrame([{"shape": "T-cls224-s1", "mode": "forward", "dma_per_point": 1.94,
                            "bytes_per_pixel": 9546.0, "model_bytes_per_pixel": 944.0, "barriers_per_point": 0.0}])
    counts.to_csv(run / "ascendc-counts.csv", index=False)
    assert reports_main([str(run)]) == 0
    summary = (run / "summary.md").read_text()
    assert "## The Ascend C kernel on the emulated Ascend C API: emulated counts, not time" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| T-cls224-s1 | forward"))
    assert [cell.strip() for cell in row.split("|")[3:5]] == ["1.94", "9.55e+03"]
    (run / "ascendc-counts.csv").unlink()
    assert reports_main([str(run)]) == 0
    assert "emulated counts" not in (run / "summary.md").read_text()


def test_compare_fails_on_a_slower_run(quick_run, tmp_path):
    slower = tmp_path / "slower"
    shutil.copytree(quick_run, slower)
    rows = pd.read_csv(slower / "results.csv")
    rows.loc[0, ["p20_ms", "p50_ms", "p80_ms"]] *= 1.5
    rows.to_csv(slower / "results.csv", index=False)
    assert reports_main([str(slower), "--compare", str(quick_run), "--compare-fail", "p50:20%"]) == 1
    assert reports_main([str(quick_run), "--compare", str(quick_run), "--compare-fail", "p50:20%"]) == 0
    assert "Change against the earlier run" in (quick_run / "summary.md").read_text()


def test_compare_fail_expressions():
    assert parse_compare_fail("p50:5%") == ("p50_ms", 0.05, True)
    assert parse_compare_fail("median:0.2") == ("p50_ms", 0.2, False)
    with pytest.raises(ValueError, match="--compare-fail must look like"):
        parse_compare_fail("mean:5")


class Rounds:
    """pytest-benchmark's pedantic runner, reduced to what time_case uses (the suite runs under
    pytest-xdist, where pytest-benchmark turns itself off)."""

    def pedantic(self, run, setup, rounds, iterations, warmup_rounds):
        data = []
        for _ in range(rounds):
            setup()
            data.append(instruments.elapsed_ms(time.perf_counter, run) / 1e3)
        self.stats = SimpleNamespace(stats=SimpleNamespace(data=data))


def test_first_call_ms_is_the_first_call_alone(monkeypatch):
    """Not the case's preparation (inputs, a backward's forward), and not a later call."""
    calls = []

    def prepared(*args):
        time.sleep(0.2)
        return lambda: (time.sleep(0.05 if not calls else 0), calls.append(1))

    monkeypatch.setattr(timing, "runner", prepared)
    settings = timing.TimingSettings(suite="quick", seconds=0.0, min_rounds=3)
    record = timing.time_case(Rounds(), impls.get("grid_sample"), SUITES["quick"][0], "backward", torch.float32,
                              torch.device("cpu"), settings)
    assert 50 <= record.first_call_ms < 150
    assert record.rounds == 3 and record.p80_ms < 25


def test_speedup_joins_on_the_same_case():
    def timed(name, shape, p50):
        return TimedCase(implementation=name, baseline=name == "grid_sample", device="cpu", dtype="float32",
                         mode="forward", suite="s", shape=shape, geometry={}, threads=1, rounds=5, first_call_ms=p50,
                         p20_ms=p50, p50_ms=p50, p80_ms=p50, peak_memory_bytes=0, bytes_moved=10**9)

    records = [timed("grid_sample", "a", 4.0), timed("fast", "a", 1.0), timed("grid_sample", "b", 9.0), timed("fast", "b", 3.0)]
    env = {"device_name": "x", "copy_bandwidth_gbps": 10_000.0, "known_peak_bandwidth_gbps": None}
    rows = tidy_rows(records, env).set_index(["implementation", "shape"])
    assert rows.loc[("fast", "a"), "speedup"] == 4.0 and rows.loc[("fast", "b"), "speedup"] == 3.0
    # 1 GB in 1 ms is 1000 GB/s: a tenth of the copy bandwidth.
    assert rows.loc[("fast", "a"), "gbps"] == pytest.approx(1000) and rows.loc[("fast", "a"), "fraction_of_peak"] == pytest.approx(0.1)


def test_bench_on_an_absent_npu_is_one_sentence():
    result = subprocess.run([sys.executable, "-m", "bench", "--device", "npu", "--suite", "quick"],
                            capture_output=True, text=True)
    if "no NPU" not in result.stderr:
        pytest.skip("an NPU is present here")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_internimage_t_stage_shapes():
    cls = internimage("T", "cls")
    assert [(s.batch, s.height, s.params.channels, s.params.group) for s in cls] == [
        (1, 56, 64, 4), (1, 28, 128, 8), (1, 14, 256, 16), (1, 7, 512, 32)]
    seg = internimage("T", "seg")
    assert [(s.batch, s.height) for s in seg] == [(2, 128), (2, 64), (2, 32), (2, 16)]
    assert all(s.params.group_channels == 16 and s.params.kernel_h == 3 for s in cls + seg)
    assert {s.params.group_channels for s in internimage("H", "seg") + internimage("G", "cls")} == {32}
    assert {s.params.offset_scale for s in internimage("L", "cls")} == {2.0}
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        suite("nope")


def test_bytes_moved_model_by_hand():
    shape = Shape("s", batch=1, height=4, width=4, params=same_padding_params(group=2, group_channels=3))
    # input 4*4*6 = 96, offset 16*2*9*2 = 576, mask 16*18 = 288, output 96 (elements)
    forward = 96 + 576 + 288 + 96
    backward = 96 + 2 * (96 + 576 + 288)
    assert traffic.bytes_moved(shape, "forward", torch.float32) == 4 * forward
    assert traffic.bytes_moved(shape, "backward", torch.float16) == 2 * backward
    assert traffic.bytes_moved(shape, "forward+backward", torch.float64) == 8 * (forward + backward)
    assert traffic.known_peak_bandwidth("NVIDIA H200") == 4.8e12
    assert traffic.known_peak_bandwidth("Ascend910B3") == 1.6e12
    assert traffic.known_peak_bandwidth("Intel(R) Xeon(R)") is None


def test_an_implementation_failing_parity_is_reported_and_not_timed(tmp_path):
    from impls import registry

    registry.register("mutant_swapped_pair")(offset_pair_swapped)
    try:
        status = bench_main(["--device", "cpu", "--suite", "quick", "--impl", "mutant_swapped_pair",
                             "--mode", "forward", "--seconds", "0.01", "--min-rounds", "2",
                             "--parity-examples", "0", "--out", str(tmp_path)])
    finally:
        registry.remove("mutant_swapped_pair")
    assert status == 1
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["not_timed"]["mutant_swapped_pair"].startswith("failed parity")
    assert set(pd.read_csv(tmp_path / "results.csv")["implementation"]) == {"grid_sample"}


@pytest.mark.parametrize("name", [n for n in impls.names() if n != "reference" and not impls.get(n).forward_only])
def test_the_backward_mode_can_repeat_its_backward(name):
    """The benchmark times backward alone by repeating it through one retained forward graph,
    also after a plain forward+backward on the same shape (which compiles that shape's backward first)."""
    from bench.cases import runner

    impl = impls.get(name)
    if impl.untimed_reason("cpu") is not None:
        pytest.skip(impl.untimed_reason("cpu"))
    shape, cpu = SUITES["quick"][0], torch.device("cpu")
    runner(impl, shape, "forward+backward", torch.float32, cpu)()
    backward = runner(impl, shape, "backward", torch.float32, cpu)
    backward()
    backward()


def test_model_suite_times_whole_backbones_and_says_where_the_time_goes(tmp_path):
    """The smallest configuration end to end: gate, timing, profile, report."""
    status = bench_main(["--device", "cpu", "--suite", "model-internimage-mini", "--impl", "cpu_kernel",
                         "--seconds", "0.02", "--min-rounds", "3", "--parity-examples", "0", "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    cases = SUITES["model-internimage-mini"]
    assert len(rows) == 2 * len(cases) * 2  # grid_sample and cpu_kernel, forward and forward+backward
    assert set(rows["mode"]) == {"forward", "forward+backward"} and set(rows["model"]) == {"mini"}
    assert rows["core_share"].between(0, 1, inclusive="neither").all() and rows["gbps"].isna().all()
    assert (rows.loc[rows["implementation"] == "grid_sample", "speedup"] == 1.0).all()
    profile = pd.read_csv(tmp_path / "profile.csv")
    for _, case_parts in profile.groupby(["implementation", "shape", "mode"]):
        assert case_parts["share"].sum() == pytest.approx(1.0)
        assert {"DCNv3 core", "linear", "convolution", "layer_norm"} <= set(case_parts["part"])
    assert reports_main([str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## Where the time goes" in summary and "](time-float32.png)" in summary
    assert not (tmp_path / "latency-float32.png").exists()


def test_the_profile_gives_the_core_its_backward_and_nothing_else():
    """Which autograd nodes count as the core's (bench/profile.py), on grid_sample, whose backward is
    ordinary PyTorch nodes: its grid sampler's, and none of the linear layers' around it."""
    run = model_runner(impls.get("grid_sample"), SUITES["model-internimage-mini"][0], "forward+backward",
                       torch.float32, torch.device("cpu"))
    events, _ = profile.profiled(run, torch.device("cpu"))
    nodes = {event.name.removeprefix(profile.BACKWARD_NODE) for event in profile.core_roots(events)
             if event.name.startswith(profile.BACKWARD_NODE)}
    assert "GridSampler2DBackward0" in nodes
    assert not {"AddmmBackward0", "NativeLayerNormBackward0", "ConvolutionBackward0"} & nodes
    forward_ranges = [event for event in profile.core_roots(events) if event.name == profile.CORE_RANGE]
    assert len(forward_ranges) == sum(models.named("mini").depths)


def test_implausible_rows_are_flagged_and_left_out_of_the_charts(quick_run, tmp_path, monkeypatch):
    flagged = tmp_path / "flagged"
    shutil.copytree(quick_run, flagged)
    rows = pd.read_csv(flagged / "results.csv")
    # A loaded CI machine can time a real row implausibly (a slowed baseline round): those stay as they were.
    as_timed = implausible(rows)
    beyond_copy = rows.index[0]
    rows.loc[beyond_copy, "gbps"] = 3 * rows.loc[beyond_copy, "copy_gbps"]
    fast = rows.index[(~rows["baseline"]) & (rows.index != beyond_copy)][0]
    rows.loc[fast, "speedup"] = 2500.0
    reasons = implausible(rows)
    assert "exceeds 2x the measured copy bandwidth" in reasons[beyond_copy]
    assert reasons[fast] == "speedup 2500x exceeds 1000x"
    assert (reasons.drop([beyond_copy, fast]) == as_timed.drop([beyond_copy, fast])).all()
    rows.assign(implausible=reasons).to_csv(flagged / "results.csv", index=False)
    drawn = []
    monkeypatch.setattr(reports_build, "speedup_chart", lambda results, *args: drawn.append(results))
    assert reports_main([str(flagged)]) == 0
    summary = (flagged / "summary.md").read_text()
    assert "## Implausible rows: left out of the means and charts" in summary and "speedup 2500x exceeds 1000x" in summary
    assert len(drawn) == 1 and len(drawn[0]) == (reasons == "").sum() and drawn[0]["speedup"].max() < 2500


def test_reports_read_a_run_without_torch():
    """A run made on an NPU host is reported anywhere: reports/ and the parity summary need pandas only."""
    code = "import sys, reports.build; print([m for m in ('torch', 'hypothesis', 'impls') if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent.parent).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("option, value, message", [
    ("--seconds", "-1", "--seconds must be >= 0, got -1.0"),
    ("--min-rounds", "0", "--min-rounds must be >= 1, got 0"),
    ("--max-rounds", "2", "--max-rounds must be >= min_rounds, got 2"),
    ("--shape", "q20-G4D16", "--shape q20-G4D16: not in suite internimage-t (T-cls224-s1, "),
])
def test_bad_timing_options_exit_2_naming_the_option(option, value, message, capsys):
    with pytest.raises(SystemExit) as exited:
        bench_main(["--device", "cpu", option, value])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_shape_picks_the_suites_cases_to_time():
    settings = timing.TimingSettings(suite="quick", shape=("q24-G4D16-rc", "q14-G2D8"))
    assert [case.name for case in settings.cases] == ["q14-G2D8", "q24-G4D16-rc"]
    assert [case.name for case in timing.TimingSettings(suite="quick").cases] == [case.name for case in SUITES["quick"]]
