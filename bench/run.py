"""The main job: parity gate, then the benchmark, then tidy rows.

    python -m bench --device cpu --suite internimage-t [--impl ...] [--dtype ...] [--mode ...] --out DIR

Writes DIR/parity.csv and DIR/parity.md (the gate on the suite's
implementations; one that fails is reported and not timed), DIR/benchmark.json
(pytest-benchmark's raw record), DIR/environment.json and DIR/results.csv:
one row per implementation, shape, mode and dtype with p20/p50/p80 ms, GB/s,
fraction of peak bandwidth, peak memory and speedup against the baseline
measured in the same run. A `model-*` suite times whole backbones instead,
adds each row's DCNv3 core share and writes DIR/profile.csv: where one
profiled repetition's time went. `python -m reports DIR` turns that into a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import impls
from bench import traffic, watchdog
from bench.cases import MODEL_MODES, MODES
from bench.shapes import SUITES, is_model_suite
from impls import devices, external
from parity import gate
from parity.thresholds import Thresholds, dtype_name

BENCH_TESTS = Path(__file__).with_name("test_bench.py")
# Columns that identify one timed case across implementations (the speedup join).
CASE_KEYS = ["device", "dtype", "mode", "suite", "shape"]
# Drawn parity cases for implementations that compile per shape (seconds each).
COMPILED_PARITY_EXAMPLES = 2
# Beyond these a row is flagged in the report, not plotted: a kernel this much faster than the fallback,
# or moving data this much faster than a flushed cache allows, has a timing or correctness bug.
PLAUSIBLE_SPEEDUP = 100.0
COPY_MULTIPLE = 2.0
# Before its first case the timing process imports torch and collects: not yet a hang.
STARTUP_SECONDS = 120


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, npu or auto (best present; default)")
    parser.add_argument("--suite", default="internimage-t", choices=sorted(SUITES), metavar="SUITE",
                        help=f"shape suite (default internimage-t): {', '.join(SUITES)}")
    parser.add_argument("--impl", nargs="+", metavar="NAME", help="implementations (default: all available); the baseline is always added")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(gate.DTYPES), help="dtypes (default float32)")
    parser.add_argument("--mode", nargs="+", choices=MODES,
                        help="modes (default: all; for a model-* suite forward and forward+backward)")
    parser.add_argument("--out", type=Path, help="output folder (default reports/<device>-<timestamp>)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per case; sets the rounds (default 1.0)")
    parser.add_argument("--min-rounds", type=int, default=5, help="fewest timed rounds per case (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads for the timed run (default: torch's choice)")
    external.add_option(parser.add_argument, "gate and time")
    parser.add_argument("--parity-examples", type=int, default=30, help="drawn parity cases before timing (default 30)")
    parser.add_argument("--timeout", type=float, default=gate.DEFAULT_TIMEOUT,
                        help=f"seconds one parity case or one timed case may take (default {gate.DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    args.mode = args.mode or list(MODEL_MODES if is_model_suite(args.suite) else MODES)
    return args


def _gbps(bytes_per_second: float | None) -> float | None:
    return None if bytes_per_second is None else bytes_per_second / 1e9


def environment(device: torch.device, args) -> dict:
    name = devices.device_name(device)
    return {
        "device": device.type,
        "device_name": name,
        "versions": devices.versions(),
        "cpu_model": devices.cpu_model(),
        "threads": args.threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "copy_bandwidth_gbps": traffic.copy_bandwidth(device) / 1e9,
        "known_peak_bandwidth_gbps": _gbps(traffic.known_peak_bandwidth(name)),
        "warnings": devices.timing_warnings(device),
        "suite": args.suite,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def gate_implementations(implementations, dtypes, device, examples, out: Path, timeout: float):
    """Run parity; return (passing implementations, {failed name: summary line})."""
    results = gate.run(implementations, dtypes, gate.sweep(examples, seed=0), device, Thresholds.load(),
                       compiled_examples=COMPILED_PARITY_EXAMPLES, timeout=timeout)
    summary = gate.summarise(results)
    gate.publish(gate.markdown(summary, {}, f"# Parity before timing on {device}"), results, out, "parity",
                 int((~results["pass"]).sum()))
    failing = summary[~summary["pass"]]
    failed = {row.implementation: f"{row.dtype} {row.quantity}: {row.failed} of {row.cases} cases over their bounds, "
                                  f"e.g. {row.tightest_case}" for row in failing.itertuples()}
    return [impl for impl in implementations if impl.name not in failed], failed


PROFILE_KEYS = ["implementation", "device", "dtype", "mode", "suite", "shape"]


def profile_rows(benchmark_json: Path) -> pd.DataFrame:
    """The model records' profiles -> one row per case and time family (ms, share of the profiled step)."""
    records = [r["extra_info"] for r in json.loads(benchmark_json.read_text())["benchmarks"] if "profile_ms" in r["extra_info"]]
    return pd.DataFrame([
        {**{key: info[key] for key in PROFILE_KEYS}, "clock": info["profile_clock"], "part": part, "ms": ms,
         "share": ms / sum(info["profile_ms"].values())}
        for info in records for part, ms in info["profile_ms"].items()
    ])


def tidy_rows(benchmark_json: Path, env: dict) -> pd.DataFrame:
    """benchmark.json's records -> one row per case, with bandwidth fractions and speedup."""
    records = json.loads(benchmark_json.read_text())["benchmarks"]
    rows = pd.DataFrame([{k: v for k, v in record["extra_info"].items() if k != "profile_ms"} for record in records])
    if rows.empty:
        return rows
    if "gbps" not in rows:  # whole models: no bytes-moved model
        rows["bytes_moved"] = rows["gbps"] = float("nan")
    rows.insert(1, "device_name", env["device_name"])
    rows["copy_gbps"] = env["copy_bandwidth_gbps"]
    rows["peak_gbps"] = float("nan") if env["known_peak_bandwidth_gbps"] is None else env["known_peak_bandwidth_gbps"]
    reference_bandwidth = rows["peak_gbps"].fillna(rows["copy_gbps"])
    rows["fraction_of_peak"] = rows["gbps"] / reference_bandwidth
    rows["fraction_of_copy"] = rows["gbps"] / rows["copy_gbps"]
    rows["peak_memory_mb"] = rows.pop("peak_memory_bytes") / 2**20
    baseline = rows[rows["baseline"]].set_index(CASE_KEYS)["p50_ms"].rename("baseline_p50_ms")
    rows = rows.join(baseline, on=CASE_KEYS)
    rows["speedup"] = rows["baseline_p50_ms"] / rows["p50_ms"]
    rows["implausible"] = implausible(rows)
    return rows


def implausible(rows: pd.DataFrame) -> pd.Series:
    """Per row, why its figures cannot be right ("" when nothing is wrong; KernelBench's sanity checks):
    bandwidth beyond the device's known peak (or, without one, beyond COPY_MULTIPLE x the measured copy:
    the cache is flushed before each repetition), or a speedup beyond PLAUSIBLE_SPEEDUP."""
    over_peak = rows["gbps"] > rows["peak_gbps"]
    over_copy = rows["peak_gbps"].isna() & (rows["gbps"] > COPY_MULTIPLE * rows["copy_gbps"])
    too_fast = rows["speedup"] > PLAUSIBLE_SPEEDUP
    return pd.Series([
        "; ".join(why for flagged, why in [
            (peak, f"{gbps:.0f} GB/s exceeds the device's peak {peak_gbps:.0f} GB/s"),
            (copy, f"{gbps:.0f} GB/s exceeds {COPY_MULTIPLE:g}x the measured copy bandwidth {copy_gbps:.0f} GB/s"),
            (fast, f"speedup {speedup:.0f}x exceeds {PLAUSIBLE_SPEEDUP:g}x"),
        ] if flagged)
        for peak, copy, fast, gbps, peak_gbps, copy_gbps, speedup in zip(
            over_peak, over_copy, too_fast, rows["gbps"], rows["peak_gbps"], rows["copy_gbps"], rows["speedup"])
    ], index=rows.index, dtype=object)


def time_implementations(pytest_args: list[str], names: list[str], out: Path, timeout: float) -> tuple[int, dict]:
    """Run the timing (one pytest process for all of `names`, watched); when it crashes or hangs,
    again without the implementation it was on. (pytest's exit status, {implementation: what happened})."""
    # It is never a distributed worker: pytest-benchmark switches itself off where PYTEST_XDIST_WORKER is
    # set, as it is for a test that runs python -m bench under pytest-xdist.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    progress = out / "timing-progress.txt"
    env[watchdog.PROGRESS] = str(progress)
    # `-p bench.watchdog` is imported before pytest puts anything on sys.path: whatever the working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_TESTS.parent.parent), env.get("PYTHONPATH")]))
    remaining, lost = list(names), {}
    try:
        while remaining:
            progress.write_text("")
            # A separate process: pytest's plugins (hypothesis, benchmark) must load before the harness imports them.
            child = subprocess.Popen(pytest_args + [arg for name in remaining for arg in ("--impl", name)], env=env)
            failure = _watch(child, progress, timeout)
            if failure is None:
                return child.returncode, lost
            started = progress.read_text().splitlines()
            if not started:
                return pytest.ExitCode.INTERNAL_ERROR, {**lost, "every implementation": f"{failure} before the first case"}
            culprit, test = started[-1].split("\t")
            lost[culprit] = f"{failure} while timing {test}"
            remaining.remove(culprit)
        return pytest.ExitCode.OK, lost
    finally:
        progress.unlink(missing_ok=True)


def _watch(child: subprocess.Popen, progress: Path, timeout: float) -> str | None:
    """None when child ends by itself with a pytest status; else what happened, after killing it on a hang."""
    last_size, last_change = 0, time.monotonic()
    while child.poll() is None:
        size = progress.stat().st_size
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > timeout + (0 if size else STARTUP_SECONDS):
            child.kill()
            child.wait()
            return f"timed out after {timeout:g} s"
        time.sleep(0.2)
    if child.returncode < 0:
        return f"crashed: {signal.Signals(-child.returncode).name}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = devices.resolve(args.device)
        external.load(args.impl_module)
        chosen, skipped = gate.select_implementations(args.impl, device)
        dtypes, unusable = gate.usable_dtypes([gate.DTYPES[name] for name in args.dtype], device)
    except (gate.UsageError, ValueError) as error:
        print(f"python -m bench: {error}", file=sys.stderr)
        return 2
    untimed = {impl.name: impl.untimed_reason(device) for impl in chosen}
    skipped.update({name: reason for name, reason in untimed.items() if reason})
    skipped.update(unusable)
    chosen = [impl for impl in chosen if not untimed[impl.name]]
    base = impls.baseline()
    if base.name not in {impl.name for impl in chosen} and base.available(device):
        chosen.insert(0, base)
    for name, reason in skipped.items():
        print(f"not timed: {name}: {reason}")

    out = args.out or Path("reports") / f"{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device, args)
    for warning in env["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)

    passing, failed = gate_implementations(chosen, dtypes, device, args.parity_examples, out, args.timeout)
    for name, why in failed.items():
        print(f"not timed: {name} failed parity ({why})")
    env["not_timed"] = {**skipped, **{name: f"failed parity: {why}" for name, why in failed.items()}}
    if not passing:
        (out / "environment.json").write_text(json.dumps(env, indent=2))
        print("python -m bench: no implementation passed parity; nothing timed", file=sys.stderr)
        return 1

    pytest_args = [
        sys.executable, "-m", "pytest", f"{BENCH_TESTS}::{'test_model' if is_model_suite(args.suite) else 'test_dcnv3'}",
        "-p", "no:cacheprovider", "-p", "bench.watchdog", "-v",
        "--rootdir", str(BENCH_TESTS.parent.parent),
        "--device", str(device), "--bench-suite", args.suite,
        "--bench-seconds", str(args.seconds), "--bench-min-rounds", str(args.min_rounds),
        "--bench-threads", str(args.threads),
        f"--benchmark-json={out / 'benchmark.json'}", "--benchmark-columns=min,median,max,rounds",
        "--benchmark-sort=name",
        # As timeit does: a garbage collection landing in one repetition is noise, not the implementation's cost.
        "--benchmark-disable-gc",
    ]
    for spec in args.impl_module:
        pytest_args += ["--impl-module", spec]
    for dtype in dtypes:
        pytest_args += ["--bench-dtype", dtype_name(dtype)]
    for mode in args.mode:
        pytest_args += ["--bench-mode", mode]
    status, lost = time_implementations(pytest_args, [impl.name for impl in passing], out, args.timeout)
    for name, why in lost.items():
        print(f"not timed: {name} {why}", file=sys.stderr)
    env["not_timed"].update({name: why for name, why in lost.items()})
    (out / "environment.json").write_text(json.dumps(env, indent=2))
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"python -m bench: the benchmark run stopped (pytest exit {status})", file=sys.stderr)
        return status

    rows = tidy_rows(out / "benchmark.json", env)
    rows.to_csv(out / "results.csv", index=False)
    columns = ["implementation", "shape", "mode", "dtype", "p50_ms", "gbps", "speedup"]
    if is_model_suite(args.suite):
        profile_rows(out / "benchmark.json").to_csv(out / "profile.csv", index=False)
        columns[columns.index("gbps")] = "core_share"
    print(rows[columns].to_markdown(index=False, floatfmt=".3g"))
    print(f"\nwrote {out}/results.csv; report: python -m reports {out}")
    return 0 if status == pytest.ExitCode.OK and not failed and not lost else 1
