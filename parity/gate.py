"""The parity gate: a seeded sweep of the parity strategies against the reference.

    python -m parity --device cpu [--impl NAME ...] [--dtype ...] [--examples K]
                     [--seed S] [--out DIR] [--thresholds FILE] [--timeout S] [--no-isolate]
                     [--impl-module package.module:Name ...]   (your own kernel; impls/external.py)
    python -m parity --model internimage-t [--size 224] [--batch 1] ...   (a whole backbone; parity/model.py)

Writes DIR/parity.csv (one row per implementation, dtype, quantity and case:
its errors, the baseline's on the same case and the bounds they set) and
DIR/parity.md, prints per implementation, dtype and quantity the worst case,
the tightest margin and the run-to-run spread, and exits 1 when any row
exceeds its per-case bound, 0 when all pass, 2 on bad usage. Each
implementation runs in a child process (parity/isolate.py): one that crashes
or hangs fails the case it was on, and the run goes on.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from tqdm import tqdm

import impls
from impls import devices, external, internimage
from parity import model as model_parity
from parity.compare import differences, evaluate, evaluate_on_side_stream, expected, judge
from parity.isolate import inline, isolated
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.strategies import problems
from parity.thresholds import DEFAULT_PATH, Thresholds, dtype_name

DTYPES = {dtype_name(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
SUMMARY_KEYS = ["implementation", "device", "dtype", "quantity"]
# A whole model in float16 is not what InternImage trains or deploys in; --dtype float16 asks for it.
MODEL_DTYPES = [torch.float64, torch.float32, torch.bfloat16]
# Seconds a child may go without finishing a case: the first case of an implementation that compiles
# includes compiling it (torch.compile's forward and backward: under a minute on 2 CPU cores).
DEFAULT_TIMEOUT = 300.0
# The regression problem whose sums collide most (many points on few pixels), run this many times per
# implementation and dtype: the run-to-run spread of atomic-add kernels (exactly 0 expected elsewhere).
SPREAD_CASE, SPREAD_RUNS = "colliding_input_gradient", 5
# Run once more on CUDA and the NPU with its inputs written on a side stream (parity/compare.py).
STREAM_CASE = "padding_order"


class UsageError(Exception):
    """Bad command line: exit status 2."""


def sweep(examples: int, seed: int) -> list[Problem]:
    """The regression problems, then `examples` problems drawn by the parity strategies."""
    drawn: list[Problem] = []

    @settings(
        max_examples=max(examples, 1),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(problems())
    def collect(problem):
        drawn.append(problem)

    if examples > 0:
        collect()
    return list(REGRESSIONS.values()) + drawn[:examples]


def select_implementations(requested: list[str] | None, device: torch.device, skip_interpreted: bool = False):
    """(implementations to check, {name: reason} of those skipped); skip_interpreted leaves interpreters
    out unless requested (a whole model through Triton's CPU interpreter takes minutes)."""
    known = impls.names()
    names = requested or [n for n in known if n != "reference"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown implementation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "reference" in names:
        raise UsageError("reference is the ground truth; choose implementations to check against it")
    chosen, skipped = [], {}
    for name in names:
        impl = impls.get(name)
        reason = impl.unavailable_reason(device)
        if reason is None and not requested and skip_interpreted and impl.interpreted():
            reason = f"{name} runs in an interpreter here: name it with --impl to check it anyway"
        if reason is None:
            chosen.append(impl)
        elif requested:
            raise UsageError(f"--impl {name}: {reason}")
        else:
            skipped[name] = reason
    return chosen, skipped


def usable_dtypes(dtypes, device) -> tuple[list, dict[str, str]]:
    """(the dtypes the device computes in, {dtype name: why not} for the others); UsageError if none is left."""
    reasons = {dtype_name(d): devices.dtype_unavailable_reason(device, d) for d in dtypes}
    usable = [d for d in dtypes if reasons[dtype_name(d)] is None]
    if not usable:
        raise UsageError(f"no dtype asked for computes on {device}: " + "; ".join(reasons.values()))
    return usable, {name: reason for name, reason in reasons.items() if reason}


class Progress:
    """What a long gate run is doing, on stderr: per implementation a bar with its cases done of total,
    elapsed time and an estimate on a terminal (tqdm), one line when it ends otherwise (CI logs); and
    its first SHOWN_FAILURES failing rows as they happen (a broken kernel fails thousands)."""

    SHOWN_FAILURES = 10

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device, self.enabled, self.terminal = device, enabled, sys.stderr.isatty()

    def start(self, name: str, total: int) -> None:
        self.name, self.started, self.done, self.failures = name, time.perf_counter(), 0, 0
        self.bar = tqdm(total=total, desc=f"parity on {self.device}: {name}", unit="run", file=sys.stderr,
                        disable=not (self.enabled and self.terminal), dynamic_ncols=True)

    def failed(self, row: dict) -> None:
        self.failures += 1
        if self.enabled and self.failures == self.SHOWN_FAILURES + 1:
            tqdm.write(f"FAIL {self.name}: further failing rows are in the report", file=sys.stderr)
        if self.enabled and self.failures <= self.SHOWN_FAILURES:
            why = row["error"] or (
                f"max {row['max_abs_diff']:.2e} (bound {row['bound']:.2e}, {row['rule']}), "
                f"mean {row['mean_abs_diff']:.2e} (bound {row['mean_bound']:.2e})")
            tqdm.write(f"FAIL {row['implementation']} {row['dtype']} {row['quantity']} case {row['case']} "
                       f"({row['problem']}): {why}", file=sys.stderr)

    def advance(self) -> None:
        self.done += 1
        self.bar.update()

    def finish(self) -> None:
        self.bar.close()
        if self.enabled and not self.terminal:
            print(f"parity on {self.device}: {self.name}: {self.done} runs (cases x dtypes, and repeats) in "
                  f"{time.perf_counter() - self.started:.1f} s, {self.failures} failing rows", file=sys.stderr)


class Run(NamedTuple):
    """One evaluation in an implementation's work: a case in a dtype; the spread case's repeats come
    with repeat > 0, and on devices with streams STREAM_CASE once more on a side stream."""

    index: int
    problem: Problem
    dtype: torch.dtype
    repeat: int = 0
    side_stream: bool = False


def parity_task(impl, item: Run, device) -> dict:
    """impl's quantities on one Run, as float64 arrays (they pickle by value)."""
    evaluation = evaluate_on_side_stream if item.side_stream else evaluate
    return {q: value.numpy() for q, value in evaluation(impl, item.problem, item.dtype, device).items()}


def run(implementations, dtypes, cases, device, thresholds: Thresholds, compiled_examples: int | None = None,
        progress: bool = True, isolate: bool = True, timeout: float = DEFAULT_TIMEOUT) -> pd.DataFrame:
    """Rows for every implementation x case of `sweep()` x dtype it declares; implementations that
    compile per shape or run in an interpreter take the regression cases and the first
    `compiled_examples` drawn ones.

    The baseline runs first, on every case and dtype another implementation needs: its errors are the
    per-case bounds (parity/thresholds.py). Then one implementation at a time, each in a child process
    unless isolate is False (parity/isolate.py); each case's reference is computed once for all.
    SPREAD_CASE runs SPREAD_RUNS times: its rows' `run_spread` is the largest difference between runs
    (atomic-add kernels differ run to run). On CUDA and the NPU, STREAM_CASE runs once more with its
    inputs written on a side stream (rows with `side_stream` True)."""
    compiled_cases = None if compiled_examples is None else len(REGRESSIONS) + compiled_examples
    spread_index, stream_index = (next((i for i, problem in enumerate(cases) if problem == REGRESSIONS[name]), None)
                                  for name in (SPREAD_CASE, STREAM_CASE))
    if not devices.has_streams(device):
        stream_index = None

    def work_of(impl, checked_one: bool) -> list[Run]:
        # Compiling per shape and interpreting both cost seconds a case; an interpreter's run-to-run
        # spread says nothing of the device it stands in for.
        interpreted = impl.interpreted()
        slow = impl.compiles_per_shape or interpreted
        work = []
        for index, problem in enumerate(cases):
            if slow and compiled_cases is not None and index >= compiled_cases:
                continue
            for dtype in filter(impl.supports, dtypes):
                work.append(Run(index, problem, dtype))
                if checked_one and index == spread_index and not interpreted:
                    work += [Run(index, problem, dtype, repeat) for repeat in range(1, SPREAD_RUNS)]
                if checked_one and index == stream_index:
                    work.append(Run(index, problem, dtype, side_stream=True))
        return work

    base = impls.baseline()
    checked = {impl.name for impl in implementations}
    needed = {(run.index, run.dtype) for impl in implementations for run in work_of(impl, False)}
    order = [base] + [impl for impl in implementations if impl.name != base.name]
    truths: dict[tuple[int, torch.dtype], dict] = {}
    yardsticks: dict[tuple[int, torch.dtype], dict | None] = {}
    shown = Progress(device, progress)
    rows = []
    for impl in order:
        work = work_of(impl, impl.name in checked)
        if impl.name not in checked:
            work = [run for run in work if (run.index, run.dtype) in needed]
        shown.start(impl.name if impl.name in checked else f"{impl.name} (the baseline, for the bounds)", len(work))
        outcomes = (isolated(parity_task, impl, work, device, timeout) if isolate
                    else inline(parity_task, impl, work, device))
        first_runs: dict[torch.dtype, tuple[dict | None, list[dict]]] = {}
        for outcome in outcomes:
            index, problem, dtype, repeat, on_side_stream = outcome.item
            actual = None if outcome.value is None else {q: torch.from_numpy(v) for q, v in outcome.value.items()}
            shown.advance()
            if repeat:
                _record_spread(*first_runs[dtype], actual, outcome.error, shown)
                continue
            if (index, dtype) not in truths:
                truths[index, dtype] = expected(problem, dtype)
            truth = truths[index, dtype]
            if impl is base and not on_side_stream:
                yardsticks[index, dtype] = None if actual is None else {q: differences(actual[q], truth[q]) for q in truth}
            if impl.name not in checked:
                continue
            judged = judge(impl.name, dtype, actual, truth, yardsticks.get((index, dtype)), thresholds)
            case_rows = [
                {"implementation": impl.name, "device": device.type, "dtype": dtype_name(dtype), "quantity": quantity,
                 "case": index, "side_stream": on_side_stream, **verdict,
                 "run_spread": 0.0 if index == spread_index and not on_side_stream else math.nan,
                 "problem": problem.label() + (" (side stream)" if on_side_stream else ""), "error": outcome.error,
                 **problem.describe()}
                for quantity, verdict in judged.items()
            ]
            rows += case_rows
            if index == spread_index and not on_side_stream:
                first_runs[dtype] = (actual, case_rows)
            for row in case_rows:
                if not row["pass"]:
                    shown.failed(row)
        shown.finish()
    return pd.DataFrame(rows)


def _record_spread(first: dict | None, case_rows: list[dict], again: dict | None, error: str, shown: Progress) -> None:
    """Widen each row's run_spread by how far a repeated run came from the first; a repeat that fails fails the case."""
    for row in case_rows:
        if first is None:
            row["run_spread"] = math.nan
        elif again is None:
            row.update(run_spread=math.nan, error=f"repeated run: {error}")
            if row["pass"]:
                row["pass"] = False
                shown.failed(row)
        else:
            row["run_spread"] = max(row["run_spread"], differences(again[row["quantity"]], first[row["quantity"]]).max_abs)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per implementation, device, dtype and quantity: cases, failures, the worst error, the largest
    ratio to the baseline's error on the same case, the least margin to a bound and its case (the
    tightest), and the run-to-run spread."""
    results = results.assign(
        margin=pd.concat([
            (results["bound"] / results["max_abs_diff"]).where(results["max_abs_diff"] > 0, float("inf")),
            (results["mean_bound"] / results["mean_abs_diff"]).where(results["mean_abs_diff"] > 0, float("inf")),
        ], axis=1).min(axis=1),
        vs_baseline=(results["max_abs_diff"] / results["baseline_max_abs_diff"]).where(results["baseline_max_abs_diff"] > 0),
    )
    grouped = results.groupby(SUMMARY_KEYS, sort=False)
    tightest = results.loc[grouped["margin"].idxmin()].set_index(SUMMARY_KEYS)
    summary = grouped.agg(
        cases=("pass", "size"), failed=("pass", lambda s: int((~s).sum())), worst_max_abs_diff=("max_abs_diff", "max"),
        ceiling=("ceiling", "max"), max_vs_baseline=("vs_baseline", "max"), margin=("margin", "min"),
        run_spread=("run_spread", "max"),
    )
    summary["pass"] = summary["failed"] == 0
    # Read back from CSV, a column of empty errors is all-NaN float64.
    error = tightest["error"].astype("string").fillna("")
    summary["tightest_case"] = (tightest["problem"] + " (" + tightest["rule"] + ")").where(
        error == "", tightest["problem"] + ": " + error)
    return summary.reset_index()


def markdown(summary: pd.DataFrame, skipped: dict[str, str], header: str) -> str:
    table = summary.to_markdown(index=False, floatfmt=".2e")
    lines = [header, "", table]
    if skipped:
        lines += ["", "Not run on this device:", ""] + [f"- {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, npu, or auto (best present; default)")
    parser.add_argument("--impl", nargs="+", metavar="NAME", help="implementations to check (default: all available)")
    external.add_option(parser.add_argument, "check")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), help="dtypes (default: all each implementation supports)")
    parser.add_argument("--examples", type=int, default=200, help="drawn cases after the regression cases (default 200)")
    parser.add_argument("--compiled-examples", type=int, default=2,
                        help="drawn cases for implementations that compile per shape or run in an interpreter "
                             "(default 2; seconds each)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed of the sweep (default 0)")
    parser.add_argument("--out", type=Path, help="folder for parity.csv and parity.md")
    parser.add_argument("--thresholds", type=Path, default=DEFAULT_PATH, help="thresholds TOML (default parity/thresholds.toml)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every implementation in this process (debugging: a crash then ends the run)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds an isolated implementation may spend on one case (default {DEFAULT_TIMEOUT:g})")
    model = parser.add_argument_group("model-level parity (parity/model.py)")
    model.add_argument("--model", metavar="internimage-NAME",
                       help=f"check a whole backbone instead: internimage-{{{','.join(c.lower() for c in internimage.CONFIGS)}}}")
    model.add_argument("--size", type=int, help="image side (default: the model's classification size)")
    model.add_argument("--batch", type=int, default=1, help="images (default 1)")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error("--examples must be >= 0")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    if args.model is not None:
        try:
            args.model = internimage.named(args.model.removeprefix("internimage-"))
        except ValueError as error:
            parser.error(f"--model: {error}")
        if args.size is not None and args.size < 32:
            parser.error("--size must be >= 32 (four stride-2 stages and a stride-2 stem)")
        if args.batch < 1:
            parser.error("--batch must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = devices.resolve(args.device)
        external.load(args.impl_module)
        implementations, skipped = select_implementations(args.impl, device, skip_interpreted=bool(args.model))
        if not implementations:
            raise UsageError(f"no implementation to check on {device}: " + "; ".join(skipped.values()))
        thresholds = Thresholds.load(args.thresholds)
        default_dtypes = MODEL_DTYPES if args.model else list(DTYPES.values())
        dtypes, unusable = usable_dtypes([DTYPES[name] for name in args.dtype] if args.dtype else default_dtypes, device)
    except (UsageError, ValueError, OSError) as error:
        print(f"python -m parity: {error}", file=sys.stderr)
        return 2

    skipped.update(unusable)
    if args.model:
        return model_parity.main(args, implementations, skipped, dtypes, device)
    cases = sweep(args.examples, args.seed)
    started = time.perf_counter()
    results = run(implementations, dtypes, cases, device, thresholds, compiled_examples=args.compiled_examples,
                  isolate=args.isolate, timeout=args.timeout)
    if results.empty:
        print(f"python -m parity: none of {', '.join(i.name for i in implementations)} supports "
              f"{', '.join(dtype_name(d) for d in dtypes)}", file=sys.stderr)
        return 2
    summary = summarise(results)
    elapsed = time.perf_counter() - started
    failed = int((~results["pass"]).sum())
    verdict = "PASS" if failed == 0 else f"FAIL: {failed} of {len(results)} rows over their bounds"
    header = (
        f"# Parity against the float64 reference on {device}\n\n"
        f"{len(cases)} cases ({len(REGRESSIONS)} regression, seed {args.seed}), "
        f"torch {torch.__version__}, {elapsed:.1f} s. {verdict}."
    )
    return publish(markdown(summary, skipped, header), results, args.out, "parity", failed)


def publish(report: str, results: pd.DataFrame, out: Path | None, stem: str, failed: int) -> int:
    """Print the report, write it and the rows as out/stem.md and out/stem.csv; the exit status."""
    print(report)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / f"{stem}.csv", index=False)
        (out / f"{stem}.md").write_text(report)
    return 0 if failed == 0 else 1
