"""The parity sweep as a library: the cases (the regression problems, then drawn ones), which
implementations and dtypes take part, and the rows of every implementation x case x dtype against the
float64 reference, each implementation in a child process (parity/isolate.py). `python -m parity`
(parity/gate.py) is its command line; `python -m bench` gates on it before timing."""

from __future__ import annotations

import math
import sys
import time
from typing import NamedTuple

import pandas as pd
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from tqdm import tqdm

from impls import devices
from impls.cli import UsageError, dtype_name
from parity import operators
from parity.compare import differences, evaluate, evaluate_on_side_stream, expected, judge, quantities_of
from parity.isolate import inline, isolated
from parity.summary import ParityRow, unsupported_verdict
from parity.thresholds import Thresholds

# Seconds a child may go without finishing a case: the first case of an implementation that compiles
# includes compiling it (torch.compile's forward and backward: under a minute on 2 CPU cores).
DEFAULT_TIMEOUT = 300.0
# The operator's spread case (the regression problem whose sums collide most: many points on few
# pixels) runs this many times per implementation and dtype: the run-to-run spread of atomic-add kernels
# (exactly 0 expected elsewhere). Its stream case runs once more on CUDA and the NPU with its inputs
# written on a side stream (parity/compare.py), of another device of the host where it has one
# (devices.another_device).
SPREAD_RUNS = 5


def sweep(examples: int, seed: int, operator: str = "dcnv3") -> list:
    """The operator's regression problems, then `examples` problems drawn by its parity strategies."""
    spec = operators.OPERATORS[operator]
    drawn = []

    @settings(
        max_examples=max(examples, 1),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(spec.problems())
    def collect(problem):
        drawn.append(problem)

    if examples > 0:
        collect()
    return list(spec.regressions.values()) + drawn[:examples]


def select_implementations(requested: list[str] | None, device: torch.device, skip_interpreted: bool = False,
                           operator: str = "dcnv3"):
    """(the operator's implementations to check, {name: reason} of those skipped); skip_interpreted leaves
    interpreters out unless requested (a whole model through Triton's CPU interpreter takes minutes)."""
    registry = operators.OPERATORS[operator].registry
    known = registry.names()
    names = requested or [n for n in known if n != "reference"]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown implementation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "reference" in names:
        raise UsageError("reference is the ground truth; choose implementations to check against it")
    chosen, skipped = [], {}
    for name in names:
        impl = registry.get(name)
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

    def failed(self, row: ParityRow) -> None:
        self.failures += 1
        if self.enabled and self.failures == self.SHOWN_FAILURES + 1:
            tqdm.write(f"FAIL {self.name}: further failing rows are in the report", file=sys.stderr)
        if self.enabled and self.failures <= self.SHOWN_FAILURES:
            v = row.verdict
            why = row.error or (f"max {v.max_abs_diff:.2e} (bound {v.bound:.2e}, {v.rule}), "
                                f"mean {v.mean_abs_diff:.2e} (bound {v.mean_bound:.2e})")
            tqdm.write(f"FAIL {row.implementation} {row.dtype} {row.quantity} case {row.case} ({row.problem}): {why}",
                       file=sys.stderr)

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
    with repeat > 0, and on devices with streams the stream case once more on a side stream."""

    index: int
    problem: object
    dtype: torch.dtype
    repeat: int = 0
    side_stream: bool = False


def parity_task(impl, item: Run, device) -> dict:
    """impl's quantities on one Run, as float64 arrays (they pickle by value)."""
    quantities = quantities_of(impl)
    if item.side_stream:
        found = evaluate_on_side_stream(impl, item.problem, item.dtype, devices.another_device(device), quantities)
    else:
        found = evaluate(impl, item.problem, item.dtype, device, quantities)
    return {q: value.numpy() for q, value in found.items()}


class Memo(NamedTuple):
    """What run() computes once per case and dtype for every implementation: the float64 reference's
    quantities and the baseline's errors (None where it raised). Kept across calls by parity/spread.py,
    whose workers run one implementation and case at a time."""

    truths: dict
    yardsticks: dict


def run(implementations, dtypes, cases, device, thresholds: Thresholds, compiled_examples: int | None = None,
        progress: bool = True, isolate: bool = True, timeout: float = DEFAULT_TIMEOUT,
        indices: set[int] | None = None, memo: Memo | None = None) -> pd.DataFrame:
    """Rows for every implementation (of one operator) x case of `sweep()` x dtype it declares; implementations that
    compile per shape or run in an interpreter take the regression problems (Problem.regression) and
    the first `compiled_examples` drawn ones.

    The baseline runs first, on every case and dtype another implementation needs: its errors are the
    per-case bounds (parity/thresholds.py). Then one implementation at a time, each in a child process
    unless isolate is False (parity/isolate.py); each case's reference is computed once for all (once per
    `memo`, where one is given).
    The spread case runs SPREAD_RUNS times: its rows' `run_spread` is the largest difference between runs
    (atomic-add kernels differ run to run). On CUDA and the NPU, the stream case runs once more with its
    inputs written on a side stream (rows with `side_stream` True) of another device where the host has
    one (a worker of parity/spread.py sees its own device alone). With `indices`, only those cases of
    `cases` run (the rows are the full sweep's rows of those cases)."""
    spec = operators.of(implementations[0])
    spread_index, stream_index = (next((i for i, problem in enumerate(cases) if problem == spec.regressions[name]), None)
                                  for name in (spec.spread_case, spec.stream_case))
    stream_device = devices.another_device(device) if devices.has_streams(device) else None
    if stream_device is None:
        stream_index = None

    # Per (implementation, case index, dtype) of the cases it is given: why the case lies outside its
    # envelope, or None. Asked once: work_of runs twice for a checked implementation.
    envelope_verdicts: dict[tuple[str, int, torch.dtype], str | None] = {}

    def work_of(impl, checked_one: bool) -> list[Run]:
        # Compiling per shape and interpreting both cost seconds a case; an interpreter's run-to-run
        # spread says nothing of the device it stands in for.
        interpreted = impl.interpreted()
        slow = impl.compiles_per_shape or interpreted
        work, drawn = [], 0
        for index, problem in enumerate(cases):
            if slow and compiled_examples is not None and not problem.regression:
                drawn += 1
                if drawn > compiled_examples:
                    continue
            if indices is not None and index not in indices:
                continue
            for dtype in filter(impl.supports, dtypes):
                key = (impl.name, index, dtype)
                if key not in envelope_verdicts:
                    envelope_verdicts[key] = outside_envelope(impl, problem, dtype)
                if envelope_verdicts[key] is not None:
                    continue
                work.append(Run(index, problem, dtype))
                if checked_one and index == spread_index and not interpreted:
                    work += [Run(index, problem, dtype, repeat) for repeat in range(1, SPREAD_RUNS)]
                if checked_one and index == stream_index:
                    work.append(Run(index, problem, dtype, side_stream=True))
        return work

    base = spec.registry.baseline()
    checked = {impl.name for impl in implementations}
    needed = {(run.index, run.dtype) for impl in implementations for run in work_of(impl, False)}
    order = [base] + [impl for impl in implementations if impl.name != base.name]
    memo = memo or Memo({}, {})
    truths, yardsticks = memo.truths, memo.yardsticks
    shown = Progress(device, progress)
    rows = []
    for impl in order:
        work = work_of(impl, impl.name in checked)
        if impl.name not in checked:
            work = [run for run in work if (run.index, run.dtype) in needed and (run.index, run.dtype) not in yardsticks]
        shown.start(impl.name if impl.name in checked else f"{impl.name} (the baseline, for the bounds)", len(work))
        outcomes = isolated(parity_task, impl, work, device, timeout) if isolate else inline(parity_task, impl, work, device)
        first_runs: dict[torch.dtype, tuple[dict | None, list[ParityRow]]] = {}
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
            checked_truth = {q: truth[q] for q in quantities_of(impl) if q in truth}
            judged = judge(impl.name, dtype, actual, checked_truth, yardsticks.get((index, dtype)), thresholds)
            case_rows = [
                ParityRow(impl.name, device.type, dtype_name(dtype), quantity, index, on_side_stream, verdict,
                          problem.label() + (f" (side stream of {stream_device})" if on_side_stream else ""),
                          outcome.error,
                          problem.describe(), 0.0 if index == spread_index and not on_side_stream else math.nan)
                for quantity, verdict in judged.items()
            ]
            rows += case_rows
            if index == spread_index and not on_side_stream:
                first_runs[dtype] = (actual, case_rows)
            for row in case_rows:
                if not row.passed:
                    shown.failed(row)
        shown.finish()
        if impl.name in checked:
            rows += [ParityRow(impl.name, device.type, dtype_name(dtype), quantity, index, False, unsupported_verdict(),
                               cases[index].label(), "", cases[index].describe(), unsupported=reason)
                     for (name, index, dtype), reason in envelope_verdicts.items() if name == impl.name and reason
                     for quantity in quantities_of(impl)]
    return pd.DataFrame([row.row() for row in rows])


def outside_envelope(impl, problem, dtype: torch.dtype) -> str | None:
    """Why problem in dtype lies outside impl's documented limits, or None; asked of its host tensors."""
    if impl.envelope is None:
        return None
    *leaves, _ = problem.tensors(dtype, "cpu")
    return problem.call(impl.outside_envelope, leaves)


def failed_rows(impl, problem, index: int, dtypes, device_type: str, thresholds: Thresholds,
                error: str) -> pd.DataFrame:
    """The rows of `impl` on case `index` where it gave no result at all (its worker died), all failing."""
    rows = [ParityRow(impl.name, device_type, dtype_name(dtype), quantity, index, False, verdict, problem.label(),
                      error, problem.describe())
            for dtype in filter(impl.supports, dtypes)
            for quantity, verdict in judge(impl.name, dtype, None, dict.fromkeys(quantities_of(impl)), None,
                                           thresholds).items()]
    return pd.DataFrame([row.row() for row in rows])


def in_sweep_order(rows: pd.DataFrame, names: list[str], dtypes, operator: str = "dcnv3") -> pd.DataFrame:
    """Rows of the operator's implementations `names` in the order run() makes them: the baseline first,
    then implementation, case, dtype, the side stream's after the default stream's, quantity."""
    spec = operators.OPERATORS[operator]
    base = spec.registry.baseline().name
    order = [base] + [name for name in names if name != base]
    rank = {
        "implementation": {name: i for i, name in enumerate(order)},
        "dtype": {dtype_name(dtype): i for i, dtype in enumerate(dtypes)},
        "quantity": {quantity: i for i, quantity in enumerate(spec.quantities)},
    }
    keys = ["implementation", "case", "dtype", "side_stream", "quantity"]
    return rows.sort_values(keys, key=lambda column: column.map(rank[column.name]) if column.name in rank else column,
                            kind="stable").reset_index(drop=True)


def _record_spread(first: dict | None, case_rows: list[ParityRow], again: dict | None, error: str, shown: Progress) -> None:
    """Widen each row's run_spread by how far a repeated run came from the first; a repeat that fails fails the case."""
    for row in case_rows:
        if first is None:
            row.run_spread = math.nan
        elif again is None:
            row.run_spread = math.nan
            newly_failed = row.passed
            row.fail(f"repeated run: {error}")
            if newly_failed:
                shown.failed(row)
        else:
            row.run_spread = max(row.run_spread, differences(again[row.quantity], first[row.quantity]).max_abs)


