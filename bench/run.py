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
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import impls
from bench import traffic
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


def gate_implementations(implementations, dtypes, device, examples, out: Path):
    """Run parity; return (passing implementations, {failed name: summary line})."""
    results = gate.run(implementations, dtypes, gate.sweep(examples, seed=0), device, Thresholds.load(),
                       compiled_examples=COMPILED_PARITY_EXAMPLES)
    summary = gate.summarise(results)
    report = gate.markdown(summary, {}, f"# Parity before timing on {device}")
    results.to_csv(out / "parity.csv", index=False)
    (out / "parity.md").write_text(report)
    print(report)
    failing = summary[~summary["pass"]]
    failed = {
        row.implementation: f"{row.dtype} {row.quantity}: {row.worst_max_abs_diff:.2e} > {row.threshold:.0e}"
        for row in failing.itertuples()
    }
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
    return rows


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

    passing, failed = gate_implementations(chosen, dtypes, device, args.parity_examples, out)
    for name, why in failed.items():
        print(f"not timed: {name} failed parity ({why})")
    env["not_timed"] = {**skipped, **{name: f"failed parity: {why}" for name, why in failed.items()}}
    (out / "environment.json").write_text(json.dumps(env, indent=2))
    if not passing:
        print("python -m bench: no implementation passed parity; nothing timed", file=sys.stderr)
        return 1

    pytest_args = [
        sys.executable, "-m", "pytest", f"{BENCH_TESTS}::{'test_model' if is_model_suite(args.suite) else 'test_dcnv3'}",
        "-p", "no:cacheprovider", "-v",
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
    for impl in passing:
        pytest_args += ["--impl", impl.name]
    for dtype in dtypes:
        pytest_args += ["--bench-dtype", dtype_name(dtype)]
    for mode in args.mode:
        pytest_args += ["--bench-mode", mode]
    # A separate process: pytest's plugins (hypothesis, benchmark) must load before the harness imports them.
    # It is never a distributed worker: pytest-benchmark switches itself off where PYTEST_XDIST_WORKER is
    # set, as it is for a test that runs python -m bench under pytest-xdist.
    worker_free = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    status = subprocess.run(pytest_args, env=worker_free).returncode
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
    return 0 if status == pytest.ExitCode.OK and not failed else 1
