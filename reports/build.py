"""Reports from benchmark runs: tables with pandas, charts with matplotlib (headless).

    python -m reports DIR [DIR ...] [--compare OLD_DIR] [--compare-fail p50:5%]

Reads only DIR/results.csv, DIR/parity.csv, DIR/environment.json, (model
suites) DIR/profile.csv and (where `python -m emulated_ascendc counts --out DIR`
wrote it) DIR/ascendc-counts.csv, so a run made on an NPU host can be reported
anywhere. Writes DIR/summary.md and DIR/speedup-<dtype>.png, latency-<dtype>.png,
bandwidth-<dtype>.png (operator suites) or time-<dtype>.png (model suites).

With --compare OLD_DIR the summary shows each row's change against the old run,
and the command exits 1 when a row got slower than --compare-fail allows:
`STAT:N%` (relative, e.g. p50:5%) or `STAT:X` (absolute, in ms), with STAT one
of p20, p50 (or median), p80 - pytest-benchmark's --benchmark-compare-fail form.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.records import MODES, ROW_KEYS  # noqa: E402
from parity.summary import summarise  # noqa: E402


def load(run: Path):
    results = pd.read_csv(run / "results.csv")
    # Runs from before the plausibility checks have no such column; an empty cell reads back as NaN.
    results["implausible"] = results.get("implausible", pd.Series("", index=results.index)).astype("string").fillna("")
    parity = pd.read_csv(run / "parity.csv") if (run / "parity.csv").exists() else None
    env = json.loads((run / "environment.json").read_text()) if (run / "environment.json").exists() else {}
    return results, parity, env


def load_ascendc_counts(run: Path) -> pd.DataFrame | None:
    """The Ascend C kernel's per-pixel counts on the emulated API (tests/emulated_ascendc), or None."""
    return pd.read_csv(run / "ascendc-counts.csv") if (run / "ascendc-counts.csv").exists() else None


def load_profile(run: Path) -> pd.DataFrame | None:
    """A model suite's profile.csv (bench/profile.py), or None."""
    return pd.read_csv(run / "profile.csv") if (run / "profile.csv").exists() else None


def _part_order(profile: pd.DataFrame) -> list[str]:
    """The core first, the other families by their total time, what no operator accounts for last."""
    totals = profile.groupby("part")["ms"].sum().sort_values(ascending=False)
    first, last = profile["part"].iloc[0], "Python and untracked"
    return [first] + [p for p in totals.index if p not in (first, last)] + ([last] if last in totals else [])


def time_breakdown(profile: pd.DataFrame, order: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """Per dtype, shape and mode: the profiled step's parts down, implementations across, 'ms (share)'."""
    tables = []
    for (dtype, shape, mode), part in profile.groupby(["dtype", "shape", "mode"], sort=False):
        cells = part.assign(cell=[f"{ms:.3g} ms ({share:.0%})" for ms, share in zip(part["ms"], part["share"])])
        table = cells.pivot(index="part", columns="implementation", values="cell")
        table = table.reindex(index=_part_order(part), columns=[i for i in order if i in table.columns])
        tables.append((f"{shape}, {mode}, {dtype} ({part['clock'].iloc[0]})", table.fillna("").reset_index()))
    return tables


def breakdown_chart(profile: pd.DataFrame, order: list[str], env: dict, dtype: str, path: Path) -> None:
    """One panel per shape and mode: a stacked bar per implementation, the core at the bottom."""
    part = profile[profile["dtype"] == dtype]
    panels = list(dict.fromkeys(zip(part["shape"], part["mode"])))
    parts = _part_order(part)
    colours = _colours(parts)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, (shape, mode) in zip(axes[0], panels):
        rows = part[(part["shape"] == shape) & (part["mode"] == mode)]
        table = rows.pivot(index="implementation", columns="part", values="ms").reindex(
            index=[name for name in order if name in set(rows["implementation"])], columns=parts).fillna(0)
        bottom = np.zeros(len(table))
        for name in parts:
            ax.bar(table.index, table[name], bottom=bottom, label=name, color=colours[name])
            bottom += table[name].to_numpy()
        ax.set_title(f"{shape} {mode}", fontsize=9)
        ax.set_ylabel(f"profiled step (ms, {rows['clock'].iloc[0]})")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(f"Where a whole model's time goes: {env.get('device_name', '?')}, {dtype}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def implementations_in_order(results: pd.DataFrame) -> list[str]:
    """Baseline first, then the others by name: the same colour for a name in every chart."""
    baseline = results.loc[results["baseline"], "implementation"].unique().tolist()
    return baseline + sorted(set(results["implementation"]) - set(baseline))


def geometric_mean_speedups(results: pd.DataFrame) -> pd.DataFrame:
    table = (
        results.dropna(subset=["speedup"])
        .groupby(["dtype", "implementation", "mode"])["speedup"]
        .apply(lambda s: float(np.exp(np.log(s).mean())))
        .unstack("mode")
    )
    return table[[m for m in MODES if m in table.columns]].reset_index()


def speedup_tables(results: pd.DataFrame, forward_only=()) -> list[tuple[str, pd.DataFrame]]:
    """Per dtype and mode: shapes down, implementations across, 'p50 ms (speedup x)' cells; the columns of
    `forward_only` implementations say so in the other modes."""
    order = implementations_in_order(results)
    tables = []
    for (dtype, mode), part in results.groupby(["dtype", "mode"], sort=False):
        cells = part.assign(cell=[
            f"{p50:.3g} ms ({speedup:.2f}x)" if pd.notna(speedup) else f"{p50:.3g} ms"
            for p50, speedup in zip(part["p50_ms"], part["speedup"])
        ])
        table = cells.pivot(index="shape", columns="implementation", values="cell")
        table = table.reindex(index=part["shape"].unique(), columns=[i for i in order if i in table.columns])
        absent = [name for name in forward_only if name not in table.columns and mode != "forward"
                  and name in set(results.loc[results["dtype"] == dtype, "implementation"])]
        table = table.assign(**dict.fromkeys(absent, "forward only"))
        tables.append((f"{dtype}, {mode}", table.reset_index()))
    return tables


def parse_compare_fail(expression: str) -> tuple[str, float, bool]:
    """'p50:5%' -> ('p50_ms', 0.05, True); 'median:0.2' -> ('p50_ms', 0.2, False)."""
    match = re.fullmatch(r"(p20|p50|p80|median):([0-9.]+)(%?)", expression)
    if not match:
        raise ValueError(f"--compare-fail must look like p50:5% or p50:0.2 (ms), got {expression!r}")
    stat = "p50" if match.group(1) == "median" else match.group(1)
    relative = match.group(3) == "%"
    amount = float(match.group(2)) / (100 if relative else 1)
    return f"{stat}_ms", amount, relative


def compare(new: pd.DataFrame, old: pd.DataFrame, expression: str) -> pd.DataFrame:
    column, amount, relative = parse_compare_fail(expression)
    joined = new[ROW_KEYS + [column]].merge(old[ROW_KEYS + [column]], on=ROW_KEYS, suffixes=("", "_old"))
    joined["change"] = joined[column] / joined[f"{column}_old"] - 1
    excess = joined["change"] if relative else joined[column] - joined[f"{column}_old"]
    joined["regressed"] = excess > amount
    return joined


def operator(env: dict) -> str:
    """The run's operator by name; runs from before the second operator name none: DCNv3's."""
    return env.get("operator", "DCNv3")


def _title(env: dict, results: pd.DataFrame, what: str, dtype: str) -> str:
    device = f"{env.get('device_name', '?')} ({results['device'].iloc[0]})"
    return f"{operator(env)} {what}: {device}, {dtype}, suite {env.get('suite', results['suite'].iloc[0])}"


def _mode_axes(modes, height=4.2):
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), height), squeeze=False)
    return fig, axes[0]


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def _plain_log_ticks(axis) -> None:
    axis.set_major_formatter(PLAIN)
    # Label the 2s and 5s between decades too: log axes over one decade otherwise show no number.
    axis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))


def _colours(order):
    palette = plt.get_cmap("tab10")
    return {name: palette(i % 10) for i, name in enumerate(order)}


def _bars_per_shape(part: pd.DataFrame, column: str, env: dict, dtype: str, what: str, ylabel: str,
                    path: Path, decorate) -> None:
    """One panel per mode: a group of bars per shape, one bar per implementation."""
    order, modes = implementations_in_order(part), [m for m in MODES if m in set(part["mode"])]
    colours = _colours(order)
    shapes = part["shape"].unique()
    fig, axes = _mode_axes(modes, height=4.2 + 0.06 * len(shapes))
    width = 0.8 / len(order)
    for ax, mode in zip(axes, modes):
        rows = part[part["mode"] == mode].set_index(["shape", "implementation"])[column]
        x = np.arange(len(shapes))
        for k, name in enumerate(order):
            values = [rows.get((shape, name), np.nan) for shape in shapes]
            ax.bar(x + (k - (len(order) - 1) / 2) * width, values, width, label=name, color=colours[name])
        decorate(ax)
        ax.set_xticks(x, shapes, rotation=45, ha="right", fontsize=8)
        ax.set_title(mode)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    # Below the panels: inside one, the legend hid the tallest bars.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(_title(env, part, what, dtype))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_chart(results: pd.DataFrame, env: dict, dtype: str, path: Path) -> None:
    def baseline_line(ax):
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")

    _bars_per_shape(results[results["dtype"] == dtype], "speedup", env, dtype, "speedup against the baseline",
                    "speedup vs baseline (x, higher is faster)", path, baseline_line)


def latency_chart(results: pd.DataFrame, env: dict, dtype: str, path: Path) -> None:
    part = results[results["dtype"] == dtype]
    order, modes = implementations_in_order(part), [m for m in MODES if m in set(part["mode"])]
    colours = _colours(order)
    fig, axes = _mode_axes(modes)
    for ax, mode in zip(axes, modes):
        for name in order:
            rows = part[(part["mode"] == mode) & (part["implementation"] == name)].sort_values("bytes_moved")
            if rows.empty:
                continue
            megabytes = rows["bytes_moved"] / 1e6
            spread = [rows["p50_ms"] - rows["p20_ms"], rows["p80_ms"] - rows["p50_ms"]]
            ax.errorbar(megabytes, rows["p50_ms"], yerr=spread, marker="o", capsize=3, label=name, color=colours[name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax.xaxis)
        _plain_log_ticks(ax.yaxis)
        ax.set_title(mode)
        ax.set_xlabel("problem size: bytes moved (MB, log)")
        ax.set_ylabel("latency p50 (ms, log; bars p20-p80)")
        ax.grid(which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(_title(env, part, "latency against problem size", dtype))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bandwidth_chart(results: pd.DataFrame, env: dict, dtype: str, path: Path) -> None:
    part = results[results["dtype"] == dtype]
    copy_gbps, peak_gbps = part["copy_gbps"].iloc[0], part["peak_gbps"].iloc[0]

    def reference_lines(ax):
        ax.axhline(copy_gbps, color="black", linestyle="--", linewidth=1, label=f"measured copy {copy_gbps:.0f} GB/s")
        if pd.notna(peak_gbps):
            ax.axhline(peak_gbps, color="red", linestyle=":", linewidth=1, label=f"device peak {peak_gbps:.0f} GB/s")
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)

    _bars_per_shape(part, "gbps", env, dtype, "achieved bandwidth against peak",
                    "achieved bandwidth (GB/s, log; bytes-moved model)", path, reference_lines)


def environment_block(env: dict) -> list[str]:
    versions = env.get("versions", {})
    lines = [
        "## Environment",
        "",
        f"- device: {env.get('device_name', '?')} ({env.get('device', '?')})",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items()) or '?'}",
        f"- torch_npu: {versions.get('torch_npu', 'not present')}; CANN: {versions.get('cann', 'not present')}",
        f"- CPU: {env.get('cpu_model', '?')}, {env.get('threads', '?')} torch threads",
        f"- copy bandwidth measured in this run: {env.get('copy_bandwidth_gbps', float('nan')):.1f} GB/s; "
        f"known device peak: {_or_unknown(env.get('known_peak_bandwidth_gbps'), 'GB/s')}",
        f"- command: `{env.get('command', '?')}` at {env.get('started', '?')}",
    ]
    if "timed_on" in env:
        lines.append(f"- timed on: {', '.join(env['timed_on'])} (each speedup against the baseline timed on the "
                     "same device)")
    lines += [f"- **warning: {warning}**" for warning in env.get("warnings", [])]
    lines += [f"- not timed: {name}: {why}" for name, why in env.get("not_timed", {}).items()]
    lines += [f"- forward only (no backward; timed in the forward mode alone): {name}" for name in env.get("forward_only", [])]
    return lines + [""]


def _or_unknown(value, unit):
    return "unknown (fractions are of the measured copy bandwidth)" if value is None else f"{value:.0f} {unit}"


def summary_markdown(results, parity, env, charts, comparison=None, profile=None, ascendc_counts=None) -> str:
    fmt = dict(index=False, floatfmt=".3g")
    lines = [f"# {operator(env)} benchmark: {env.get('device_name', '?')} ({env.get('device', '?')}), suite {env.get('suite', '?')}", ""]
    lines += environment_block(env)
    flagged = results[results["implausible"] != ""]
    if not flagged.empty:
        lines += ["## Implausible rows: left out of the means and charts", "",
                  "Their figures break a physical or plausibility bound (bench/run.py `implausible`): a timing "
                  "or correctness bug to find before quoting anything from them.", "",
                  flagged[ROW_KEYS + ["p50_ms", "gbps", "speedup", "implausible"]].to_markdown(**fmt), ""]
    forward_only = env.get("forward_only", [])
    means = geometric_mean_speedups(plausible(results))
    cells = means.assign(**{mode: [_mean_cell(value, name in forward_only, mode)
                                   for value, name in zip(means[mode], means["implementation"])]
                            for mode in MODES if mode in means.columns})
    lines += ["## Geometric-mean speedup against the baseline (same run, p50)", "",
              cells.to_markdown(index=False), ""]
    for title, table in speedup_tables(results, forward_only):
        lines += [f"## Latency p50 and speedup per shape: {title}", "", table.to_markdown(index=False), ""]
    if profile is not None:
        lines += ["## Where the time goes (one profiled repetition per row)", "",
                  "The DCNv3 core's forward and backward, then every other operator's own time by family "
                  "(bench/profile.py); profiling slows a step down, so the parts are for proportions, the "
                  "latencies above for speed.", ""]
        for title, table in time_breakdown(profile, implementations_in_order(results)):
            lines += [f"### {title}", "", table.to_markdown(index=False), ""]
    columns = ["implementation", "shape", "mode", "dtype", "p20_ms", "p50_ms", "p80_ms", "gbps",
               "fraction_of_peak", "peak_memory_mb", "speedup"]
    if results["device"].nunique() > 1:  # spread over devices (python -m bench --devices): which timed the row
        columns.insert(1, "device")
    if results["core_share"].notna().any():  # whole models: the core share in place of bandwidth
        columns[columns.index("gbps"):columns.index("peak_memory_mb")] = ["core_share"]
    if not flagged.empty:
        columns.append("implausible")
    lines += ["## All rows", "", results[columns].to_markdown(**fmt), ""]
    if parity is not None:
        lines += ["## Parity against the float64 reference (before timing)", "",
                  summarise(parity).drop(columns=["tightest_case"]).to_markdown(index=False, floatfmt=".2e"), ""]
    if ascendc_counts is not None:
        lines += ["## The Ascend C kernel on the emulated Ascend C API: emulated counts, not time", "",
                  "Per sampling point and per output pixel (all groups), under the 910B3 plan, on each "
                  "InternImage-T shape: DMA copies (DataCopyPad calls), bytes they move beside the "
                  "bytes-moved model's, full pipeline barriers, SetFlag/WaitFlag pairs, vector instructions "
                  "and scalar reads and writes of the unified buffer (tests/emulated_ascendc).", "",
                  ascendc_counts.to_markdown(index=False, floatfmt=".3g"), ""]
    if comparison is not None:
        lines += ["## Change against the earlier run", "", comparison.to_markdown(**fmt), ""]
    lines += ["## Charts", ""] + [f"![{chart.stem}]({chart.name})" for chart in charts]
    return "\n".join(lines) + "\n"


def _mean_cell(value: float, forward_only: bool, mode: str) -> str:
    """A geometric mean as the summary shows it; a forward-only implementation's other modes say so."""
    if pd.notna(value):
        return f"{value:.3g}"
    return "forward only" if forward_only and mode != "forward" else ""


def plausible(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["implausible"] == ""]


def build(run: Path, old: Path | None, compare_fail: str) -> bool:
    """Write run's summary and charts; False when the comparison finds a regression."""
    results, parity, env = load(run)
    profile = load_profile(run)
    # Whole models have no bytes-moved model: no latency-against-size or bandwidth charts, a time breakdown.
    sized = results["bytes_moved"].notna().any()
    drawings = [("speedup", speedup_chart)] + (
        [("latency", latency_chart), ("bandwidth", bandwidth_chart)] if sized else [])
    charts = []
    for dtype in plausible(results)["dtype"].unique():
        for name, draw in drawings:
            path = run / f"{name}-{dtype}.png"
            draw(plausible(results), env, dtype, path)
            charts.append(path)
        if profile is not None:
            path = run / f"time-{dtype}.png"
            breakdown_chart(profile, implementations_in_order(results), env, dtype, path)
            charts.append(path)
    comparison = None
    if old is not None:
        comparison = compare(results, load(old)[0], compare_fail)
    (run / "summary.md").write_text(summary_markdown(results, parity, env, charts, comparison, profile,
                                                     load_ascendc_counts(run)))
    print(f"wrote {run / 'summary.md'} and {len(charts)} charts")
    if comparison is not None and comparison["regressed"].any():
        worse = comparison[comparison["regressed"]]
        print(f"{len(worse)} row(s) slower than {compare_fail} allows:\n{worse.to_markdown(index=False, floatfmt='.3g')}")
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="folders written by python -m bench")
    parser.add_argument("--compare", type=Path, metavar="OLD_DIR", help="an earlier run to compare with")
    parser.add_argument("--compare-fail", default="p50:10%", help="slowdown that fails the comparison (default p50:10%%)")
    args = parser.parse_args(argv)
    try:
        parse_compare_fail(args.compare_fail)
        for run in args.runs + ([args.compare] if args.compare else []):
            if not (run / "results.csv").exists():
                raise ValueError(f"{run} has no results.csv (run python -m bench --out {run} first)")
    except ValueError as error:
        print(f"python -m reports: {error}", file=sys.stderr)
        return 2
    ok = [build(run, args.compare, args.compare_fail) for run in args.runs]
    return 0 if all(ok) else 1
