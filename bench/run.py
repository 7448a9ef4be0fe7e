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

The timing is bench/timing.py's, the code `pytest bench` runs, called in this process with
pytest-benchmark as its engine. The gate runs each implementation in a child process (parity/isolate.py);
--isolate times each in one too (a port that crashes or hangs while timed then costs its own rows, not
the run; tritonbench's --isolate), --no-isolate gates in this process as well. --devices spreads the gate
and the timing over the host's devices, one pytest-xdist worker each (parity/spread.py, bench/spread.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from bench import instruments, timing, traffic
from bench import spread as bench_spread
from bench.records import CASE_KEYS, TimedCase
from bench.shapes import is_model_suite
from impls import devices, external
from impls.cli import UsageError
from impls.registry import REGISTRIES
from parity import operators, runner, spread
from parity.isolate import inline, isolated
from parity.summary import markdown, publish, summarise
from parity.thresholds import Thresholds

# Drawn parity cases for implementations that compile per shape (seconds each).
COMPILED_PARITY_EXAMPLES = 2
# Beyond these a row is flagged in the report, not plotted: a kernel this much faster than the fallback,
# or moving data this much faster than a flushed cache allows, has a timing or correctness bug. (On small
# shapes the fallback is all overhead: cpu_kernel's forward measured 117x it on the quick suite's q20 on
# 2 loaded CPU cores; an unsynchronised accelerator timing reads thousands.)
PLAUSIBLE_SPEEDUP = 1000.0
COPY_MULTIPLE = 2.0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, npu or auto (best present; default)")
    parser.add_argument("--impl", nargs="+", metavar="NAME", help="implementations (default: all available); the baseline is always added")
    timing.add_options(parser.add_argument, "", dict(nargs="+"))
    parser.add_argument("--out", type=Path, help="output folder (default reports/<device>-<timestamp>)")
    external.add_option(parser.add_argument, "gate and time")
    parser.add_argument("--parity-examples", type=int, default=30, help="drawn parity cases before timing (default 30)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--isolate", dest="isolate", action="store_const", const="all", default="parity",
                       help="time each implementation in a child process too, so that a port that crashes or hangs "
                            "while timed costs its own rows (default: the gate isolates, the timing runs here)")
    where.add_argument("--no-isolate", dest="isolate", action="store_const", const="none",
                       help="gate every implementation in this process too (debugging: a crash then ends the run)")
    parser.add_argument("--timeout", type=float, default=runner.DEFAULT_TIMEOUT,
                        help=f"seconds one parity case or one timed case may take (default {runner.DEFAULT_TIMEOUT:g})")
    parser.add_argument("--devices", metavar="all|N|0,3,5",
                        help="gate and time on these devices of --device's type, one pytest-xdist worker each "
                             "(bench/spread.py): all, the first N, or these indices; on cpu the gate spreads over "
                             "N workers and the timing stays in one process")
    args = parser.parse_args(argv)
    if args.devices is not None and ":" in args.device:
        parser.error("--devices names the devices: not with an index in --device")
    try:
        args.settings = timing.settings_from(lambda name: getattr(args, name))
    except ValueError as error:
        parser.error(f"--{error}")
    return args


def _gbps(bytes_per_second: float | None) -> float | None:
    return None if bytes_per_second is None else bytes_per_second / 1e9


def environment(device: torch.device, settings: timing.TimingSettings) -> dict:
    name = devices.device_name(device)
    return {
        "device": device.type,
        "device_name": name,
        "versions": instruments.versions(),
        "cpu_model": devices.cpu_model(),
        "threads": settings.threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "copy_bandwidth_gbps": traffic.copy_bandwidth(device) / 1e9,
        "known_peak_bandwidth_gbps": _gbps(traffic.known_peak_bandwidth(name)),
        "warnings": instruments.timing_warnings(device),
        "operator": operators.OPERATORS[settings.op].title,
        "suite": settings.suite,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def gate_implementations(implementations, dtypes, device, examples, out: Path, isolate: bool, timeout: float,
                         workers: list | None = None, impl_module: list[str] = (), operator: str = "dcnv3"):
    """Run the operator's parity, spread over `workers` (impls/devices.py worker_devices) where given; return
    (passing implementations, {failed name: summary line})."""
    cases, thresholds = runner.sweep(examples, 0, operator), Thresholds.load(operator=operator)
    if workers is None:
        results = runner.run(implementations, dtypes, cases, device, thresholds,
                             compiled_examples=COMPILED_PARITY_EXAMPLES, isolate=isolate, timeout=timeout)
    else:
        sweep = spread.Sweep(device.type, [i.name for i in implementations], dtypes, cases, thresholds,
                             COMPILED_PARITY_EXAMPLES, list(impl_module), timeout, operator)
        results, _ = spread.run(sweep, workers)
    summary = summarise(results)
    publish(markdown(summary, {}, f"# Parity before timing on {device}", results), results, out, "parity",
            int((~results["pass"]).sum()))
    failing = summary[~summary["pass"]]
    failed = {row.implementation: f"{row.dtype} {row.quantity}: {row.failed} of {row.cases} cases over their bounds, "
                                  f"e.g. {row.tightest_case}" for row in failing.itertuples()}
    return [impl for impl in implementations if impl.name not in failed], failed


def tidy_rows(records: list[TimedCase], env: dict) -> pd.DataFrame:
    """One row per timed case, with bandwidth fractions and the speedup against the baseline's same case."""
    rows = pd.DataFrame([record.row() for record in records])
    if rows.empty:
        return rows
    rows.insert(1, "device_name", env["device_name"])
    rows["copy_gbps"] = env["copy_bandwidth_gbps"]
    rows["peak_gbps"] = float("nan") if env["known_peak_bandwidth_gbps"] is None else env["known_peak_bandwidth_gbps"]
    rows["gbps"] = rows["gbps"].astype(float)
    rows["fraction_of_peak"] = rows["gbps"] / rows["peak_gbps"].fillna(rows["copy_gbps"])
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


def time_implementations(implementations, settings: timing.TimingSettings, device: torch.device, isolate: bool,
                         timeout: float) -> tuple[list[TimedCase], dict, dict[str, str]]:
    """Time each implementation (bench/timing.py), in a child process unless isolate is False:
    (the records, pytest-benchmark's JSON record of them all, {implementation: what went wrong})."""
    records, benchmark_json, lost = [], {}, {}
    for impl in implementations:
        outcomes = (isolated(timing.time_implementation, impl, [settings], device, timeout) if isolate
                    else inline(timing.time_implementation, impl, [settings], device))
        for outcome in outcomes:
            if outcome.value is None:
                lost[impl.name] = outcome.error
                continue
            records += outcome.value.records
            if outcome.value.failures:
                lost[impl.name] = "failed while timing " + "; ".join(outcome.value.failures)
            part = outcome.value.benchmark_json
            benchmark_json = {**part, "benchmarks": benchmark_json.get("benchmarks", []) + part.get("benchmarks", [])}
    return records, benchmark_json, lost


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = args.settings
    try:
        device = devices.resolve(args.device)
        workers = None if args.devices is None else devices.worker_devices(device.type, args.devices)
        external.load(args.impl_module, settings.op)
        chosen, skipped = runner.select_implementations(args.impl, device, operator=settings.op)
        dtypes, unusable = runner.usable_dtypes(settings.dtypes, device)
    except (UsageError, ValueError) as error:
        print(f"python -m bench: {error}", file=sys.stderr)
        return 2
    untimed = {impl.name: impl.untimed_reason(device) for impl in chosen}
    skipped.update({name: reason for name, reason in untimed.items() if reason})
    skipped.update(unusable)
    chosen = [impl for impl in chosen if not untimed[impl.name]]
    base = REGISTRIES[settings.op].baseline()
    if base.name not in {impl.name for impl in chosen} and base.available(device):
        chosen.insert(0, base)
    for name, reason in skipped.items():
        print(f"not timed: {name}: {reason}")

    out = args.out or Path("reports") / f"{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device, settings)
    for warning in env["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)

    passing, failed = gate_implementations(chosen, dtypes, device, args.parity_examples, out, args.isolate != "none",
                                           args.timeout, workers, args.impl_module or [], settings.op)
    for name, why in failed.items():
        print(f"not timed: {name} failed parity ({why})")
    env["not_timed"] = {**skipped, **{name: f"failed parity: {why}" for name, why in failed.items()}}
    env["forward_only"] = [impl.name for impl in passing if impl.forward_only]
    if not passing:
        (out / "environment.json").write_text(json.dumps(env, indent=2))
        print("python -m bench: no implementation passed parity; nothing timed", file=sys.stderr)
        return 1

    if workers is not None and device.type != "cpu":
        timing_spread = bench_spread.Timing(device.type, [impl.name for impl in passing], settings,
                                            args.impl_module or [])
        records, benchmark_json, lost = bench_spread.run(timing_spread, workers)
        env["timed_on"] = sorted({record.device for record in records})
    else:
        records, benchmark_json, lost = time_implementations(passing, settings, device, args.isolate == "all",
                                                             args.timeout)
        env["timed_on"] = [str(device)] + (["one process: cpu workers would time each other's load"]
                                           if workers is not None and len(workers) > 1 else [])
    for name, why in lost.items():
        print(f"not timed: {name} {why}", file=sys.stderr)
    env["not_timed"].update(lost)
    (out / "environment.json").write_text(json.dumps(env, indent=2))
    (out / "benchmark.json").write_text(json.dumps(benchmark_json, indent=2))

    rows = tidy_rows(records, env)
    rows.to_csv(out / "results.csv", index=False)
    columns = ["implementation", "shape", "mode", "dtype", "p50_ms", "gbps", "speedup"]
    if is_model_suite(settings.suite):
        pd.DataFrame([row for record in records for row in record.profile_rows()]).to_csv(out / "profile.csv", index=False)
        columns[columns.index("gbps")] = "core_share"
    if not rows.empty:
        print(rows[columns].to_markdown(index=False, floatfmt=".3g"))
    print(f"\nwrote {out}/results.csv; report: python -m reports {out}")
    return 0 if not failed and not lost else 1
