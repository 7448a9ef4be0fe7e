"""The gate's rows summarised, and the report written: pandas only, so that reports/ reads a run's
parity.csv without importing torch, hypothesis or any implementation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

SUMMARY_KEYS = ["implementation", "device", "dtype", "quantity"]


@dataclass
class Verdict:
    """One quantity of one case: its errors against the reference, the baseline's on the same inputs, the
    bounds those set (parity/thresholds.py) and which rule decided."""

    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    baseline_max_abs_diff: float
    baseline_mean_abs_diff: float
    bound: float
    mean_bound: float
    ceiling: float
    rule: str
    passed: bool


def unsupported_verdict() -> Verdict:
    """The verdict on a case outside an implementation's envelope: nothing measured, nothing failed."""
    return Verdict(*[math.nan] * 8, rule="unsupported", passed=True)


@dataclass
class ParityRow:
    """A row of parity.csv: an implementation's verdict on one quantity of one case in one dtype. Written by
    the sweep (parity/runner.py), read back from the CSV by summarise() and reports/."""

    implementation: str
    device: str
    dtype: str
    quantity: str
    case: int
    side_stream: bool
    verdict: Verdict
    problem: str  # Problem.label()
    error: str  # why the call gave no result ("" when it did)
    geometry: dict = field(default_factory=dict)  # Problem.describe()
    # The largest difference between repeated runs: SPREAD_CASE's rows only, NaN elsewhere.
    run_spread: float = math.nan
    # Why the case lies outside the implementation's documented limits (not run, not wrong), else "".
    unsupported: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def fail(self, error: str) -> None:
        self.verdict.passed, self.error = False, error

    def row(self) -> dict:
        """The CSV's columns: the verdict's flattened in, `passed` written as `pass`."""
        row = asdict(self)
        verdict, geometry = row.pop("verdict"), row.pop("geometry")
        verdict["pass"] = verdict.pop("passed")
        return {**row, **verdict, **geometry}


def unsupported_mask(results: pd.DataFrame) -> pd.Series:
    """The rows of cases outside their implementation's envelope (read back from CSV, "" is NaN)."""
    return results["unsupported"].astype("string").fillna("") != ""


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per implementation, device, dtype and quantity: cases, failures, the worst error, the largest
    ratio to the baseline's error on the same case, the least margin to a bound and its case (the
    tightest), and the run-to-run spread; cases outside the implementation's envelope are counted as
    `unsupported` and judged in none of the others."""
    outside = unsupported_mask(results)
    unsupported = results[outside].groupby(SUMMARY_KEYS, sort=False).size().rename("unsupported")
    results = results[~outside]
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
    # A group all of whose cases lie outside the envelope has a row too: no case judged, none failed.
    summary = summary.reindex(summary.index.append(unsupported.index.difference(summary.index, sort=False)))
    summary[["cases", "failed"]] = summary[["cases", "failed"]].fillna(0).astype(int)
    summary.insert(1, "unsupported", unsupported.reindex(summary.index, fill_value=0))
    summary["pass"] = summary["failed"] == 0
    # Read back from CSV, a column of empty errors is all-NaN float64.
    error = tightest["error"].astype("string").fillna("")
    summary["tightest_case"] = (tightest["problem"] + " (" + tightest["rule"] + ")").where(
        error == "", tightest["problem"] + ": " + error)
    return summary.reset_index()


def markdown(summary: pd.DataFrame, skipped: dict[str, str], header: str, results: pd.DataFrame) -> str:
    table = summary.to_markdown(index=False, floatfmt=".2e")
    lines = [header, "", table]
    outside = results[unsupported_mask(results)].drop_duplicates(["implementation", "case"])
    if len(outside):
        lines += ["", "Unsupported (outside the implementation's documented limits: not run, not wrong):", ""]
        lines += [f"- {name}: {count} case(s): {reason}"
                  for (name, reason), count in outside.groupby(["implementation", "unsupported"], sort=False).size().items()]
    if skipped:
        lines += ["", "Not run on this device:", ""] + [f"- {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"



def publish(report: str, results: pd.DataFrame, out: Path | None, stem: str, failed: int) -> int:
    """Print the report, write it and the rows as out/stem.md and out/stem.csv; the exit status."""
    print(report)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / f"{stem}.csv", index=False)
        (out / f"{stem}.md").write_text(report)
    return 0 if failed == 0 else 1
