"""The parity gate: a seeded sweep of the parity strategies against the reference.

    python -m parity --device cpu [--impl NAME ...] [--dtype ...] [--examples K]
                     [--seed S] [--out DIR] [--thresholds FILE]
                     [--impl-module package.module:Name ...]   (your own kernel; impls/external.py)
    python -m parity --model internimage-t [--size 224] [--batch 1] ...   (a whole backbone; parity/model.py)

Writes DIR/parity.csv (one row per implementation, dtype, quantity and case)
and DIR/parity.md, prints the worst case per implementation, dtype and
quantity, and exits 1 when any row exceeds its threshold, 0 when all pass,
2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from tqdm import tqdm

import impls
from impls import devices, external, internimage
from parity import model as model_parity
from parity.compare import differences, evaluate, expected
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.strategies import problems
from parity.thresholds import DEFAULT_PATH, Thresholds, dtype_name

DTYPES = {dtype_name(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
SUMMARY_KEYS = ["implementation", "device", "dtype", "quantity"]
# A whole model in float16 is not what InternImage trains or deploys in; --dtype float16 asks for it.
MODEL_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


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
        self.bar = tqdm(total=total, desc=f"parity on {self.device}: {name}", unit="case", file=sys.stderr,
                        disable=not (self.enabled and self.terminal), dynamic_ncols=True)

    def failed(self, row: dict) -> None:
        self.failures += 1
        if self.enabled and self.failures == self.SHOWN_FAILURES + 1:
            tqdm.write(f"FAIL {self.name}: further failing rows are in the report", file=sys.stderr)
        if self.enabled and self.failures <= self.SHOWN_FAILURES:
            why = row["error"] or f"{row['max_abs_diff']:.2e} > {row['threshold']:.0e}"
            tqdm.write(f"FAIL {row['implementation']} {row['dtype']} {row['quantity']} case {row['case']} "
                       f"({row['problem']}): {why}", file=sys.stderr)

    def advance(self) -> None:
        self.done += 1
        self.bar.update()

    def finish(self) -> None:
        self.bar.close()
        if self.enabled and not self.terminal:
            print(f"parity on {self.device}: {self.name}: {self.done} cases x dtypes in "
                  f"{time.perf_counter() - self.started:.1f} s, {self.failures} failing rows", file=sys.stderr)


def run(implementations, dtypes, cases, device, thresholds: Thresholds, compiled_examples: int | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Rows for every implementation x case of `sweep()` x dtype it declares; implementations that
    compile per shape take the regression cases and the first `compiled_examples` drawn ones. One
    implementation at a time (its progress shown), each case's reference computed once for all."""
    compiled_cases = None if compiled_examples is None else len(REGRESSIONS) + compiled_examples
    truths: dict[tuple[int, torch.dtype], dict] = {}
    shown = Progress(device, progress)
    rows = []
    for impl in implementations:
        work = [
            (index, problem, dtype) for index, problem in enumerate(cases) for dtype in dtypes
            if impl.supports(dtype)
            and not (impl.compiles_per_shape and compiled_cases is not None and index >= compiled_cases)
        ]
        shown.start(impl.name, len(work))
        for index, problem, dtype in work:
            if (index, dtype) not in truths:
                truths[index, dtype] = expected(problem, dtype)
            # A kernel that raises fails its case; the gate goes on and reports the error.
            try:
                actual, error = evaluate(impl, problem, dtype, device), ""
            except Exception as exception:
                actual, error = None, devices.describe(exception)
            for quantity, reference_value in truths[index, dtype].items():
                if actual is None:
                    max_abs = max_rel = float("inf")
                else:
                    max_abs, max_rel = differences(actual[quantity], reference_value)
                limit = thresholds.get(impl.name, dtype, quantity)
                row = {
                    "implementation": impl.name,
                    "device": device.type,
                    "dtype": dtype_name(dtype),
                    "quantity": quantity,
                    "case": index,
                    "max_abs_diff": max_abs,
                    "max_rel_diff": max_rel,
                    "threshold": limit,
                    "pass": bool(max_abs <= limit),
                    "problem": problem.label(),
                    "error": error,
                    **problem.describe(),
                }
                rows.append(row)
                if not row["pass"]:
                    shown.failed(row)
            shown.advance()
        shown.finish()
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """The worst case per implementation, device, dtype and quantity."""
    worst = results.loc[results.groupby(SUMMARY_KEYS, sort=False)["max_abs_diff"].idxmax()]
    summary = worst[SUMMARY_KEYS + ["max_abs_diff", "threshold", "problem"]].rename(
        columns={"max_abs_diff": "worst_max_abs_diff", "problem": "worst_case"}
    )
    if "error" in worst:
        # Read back from CSV, a column of empty errors is all-NaN float64.
        error = worst["error"].astype("string").fillna("")
        raised = error != ""
        summary.loc[raised, "worst_case"] += " raised " + error[raised]
    counts = results.groupby(SUMMARY_KEYS, sort=False).agg(cases=("pass", "size"), failed=("pass", lambda s: int((~s).sum())))
    summary = summary.merge(counts.reset_index(), on=SUMMARY_KEYS)
    summary["margin"] = summary["threshold"] / summary["worst_max_abs_diff"].where(summary["worst_max_abs_diff"] > 0)
    summary["pass"] = summary["failed"] == 0
    return summary[SUMMARY_KEYS + ["cases", "failed", "worst_max_abs_diff", "threshold", "margin", "pass", "worst_case"]]


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
                        help="drawn cases for implementations that compile per shape (default 2; seconds each)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed of the sweep (default 0)")
    parser.add_argument("--out", type=Path, help="folder for parity.csv and parity.md")
    parser.add_argument("--thresholds", type=Path, default=DEFAULT_PATH, help="thresholds TOML (default parity/thresholds.toml)")
    model = parser.add_argument_group("model-level parity (parity/model.py)")
    model.add_argument("--model", metavar="internimage-NAME",
                       help=f"check a whole backbone instead: internimage-{{{','.join(c.lower() for c in internimage.CONFIGS)}}}")
    model.add_argument("--size", type=int, help="image side (default: the model's classification size)")
    model.add_argument("--batch", type=int, default=1, help="images (default 1)")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error("--examples must be >= 0")
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
    results = run(implementations, dtypes, cases, device, thresholds, compiled_examples=args.compiled_examples)
    if results.empty:
        print(f"python -m parity: none of {', '.join(i.name for i in implementations)} supports "
              f"{', '.join(dtype_name(d) for d in dtypes)}", file=sys.stderr)
        return 2
    summary = summarise(results)
    elapsed = time.perf_counter() - started
    failed = int((~results["pass"]).sum())
    verdict = "PASS" if failed == 0 else f"FAIL: {failed} of {len(results)} rows over threshold"
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
