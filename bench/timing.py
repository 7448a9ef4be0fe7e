"""Timing one case, the same code behind both front doors: `pytest bench` and `python -m bench`.

pytest-benchmark is the engine: its `pedantic` runner times each round with a device-synchronising clock
(bench/instruments.py) after a setup that flushes the device cache, and its statistics are the only ones
(p20/p50/p80 come from its rounds). `python -m bench` runs pytest in its own process, handing over its
TimingSettings and the implementation to time through a TimingRequest plug-in, and gets TimedCase
records back from it; `pytest bench` builds the same request from its options (conftest.py), declared
from the same table (OPTIONS) as `python -m bench`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from bench import instruments, profile, traffic
from bench.cases import model_runner, runner
from bench.records import MODEL_MODES, MODES, TimedCase
from bench.shapes import DEFAULT_SUITES, SUITES, ModelCase, MSDAShape, Shape, is_model_suite, operator_of
from impls import Implementation
from impls.cli import DTYPES, dtype_name
from parity import isolate

BENCH_TESTS = Path(__file__).with_name("test_bench.py")
WARMUP_ROUNDS = 3
# CPU peak-RSS growth varies by about a third run to run on MB-sized problems.
MEMORY_RUNS = 3


@dataclass(frozen=True)
class TimingSettings:
    """What to time and for how long: the options of both front doors (OPTIONS is their table)."""

    op: str = field(default="", metadata=dict(
        choices=sorted(DEFAULT_SUITES), help="the operator: dcnv3 or msda (default: the suite's; dcnv3 without one)"))
    suite: str = field(default="", metadata=dict(
        choices=sorted(SUITES), metavar="SUITE",
        help="shape suite (default: the operator's, " + " or ".join(DEFAULT_SUITES.values()) + "): " + ", ".join(SUITES)))
    shape: tuple[str, ...] = field(default=(), metadata=dict(
        metavar="SHAPE", help="shapes (or models) of the suite to time (default: all)"))
    dtype: tuple[str, ...] = field(default=("float32",), metadata=dict(
        choices=sorted(DTYPES), help="dtypes (default float32)"))
    mode: tuple[str, ...] = field(default=(), metadata=dict(
        choices=MODES, help="modes (default: all; for a model-* suite forward and forward+backward)"))
    seconds: float = field(default=1.0, metadata=dict(help="time budget per case; sets the rounds (default 1.0)"))
    min_rounds: int = field(default=5, metadata=dict(help="fewest timed rounds per case (default 5)"))
    max_rounds: int = field(default=200, metadata=dict(help="most timed rounds per case (default 200)"))
    threads: int = field(default=0, metadata=dict(help="torch CPU threads for the timing (default: torch's choice)"))

    def __post_init__(self):
        # Frozen: the defaults that depend on each other are settled once, here.
        if not self.suite:
            object.__setattr__(self, "suite", DEFAULT_SUITES[self.op or "dcnv3"])
        if not self.op:
            object.__setattr__(self, "op", operator_of(self.suite))
        elif operator_of(self.suite) != self.op:
            raise ValueError(f"suite {self.suite} times {operator_of(self.suite)}, not op {self.op}")
        for name, floor, least in (("seconds", "0", 0), ("min_rounds", "1", 1),
                                   ("max_rounds", "min_rounds", self.min_rounds), ("threads", "0", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name.replace('_', '-')} must be >= {floor}, got {getattr(self, name)}")
        unknown = sorted(set(self.shape) - {case.name for case in SUITES[self.suite]})
        if unknown:
            raise ValueError(f"shape {', '.join(unknown)}: not in suite {self.suite} "
                             f"({', '.join(case.name for case in SUITES[self.suite])})")

    @property
    def modes(self) -> tuple[str, ...]:
        return self.mode or (MODEL_MODES if is_model_suite(self.suite) else MODES)

    @property
    def cases(self) -> list[Shape] | list[ModelCase] | list[MSDAShape]:
        """The suite's shapes (or models) to time: those --shape names, or all."""
        return [case for case in SUITES[self.suite] if not self.shape or case.name in self.shape]

    @property
    def dtypes(self) -> list[torch.dtype]:
        return [DTYPES[name] for name in self.dtype]


OPTIONS = fields(TimingSettings)


def add_options(add: Callable, prefix: str, many: dict) -> None:
    """Declare OPTIONS with `add` (argparse's add_argument or pytest's addoption): `--{prefix}{name}`,
    the tuple-valued ones taking several values the way `many` says (nargs or action)."""
    for option in OPTIONS:
        flag = f"--{prefix}{option.name.replace('_', '-')}"
        if option.type.startswith("tuple"):
            add(flag, **many, default=None, **option.metadata)
        else:
            add(flag, type=type(option.default), default=option.default, **option.metadata)


def settings_from(value: Callable[[str], object]) -> TimingSettings:
    """TimingSettings from each option's parsed value (value(name); None keeps the default)."""
    given = {option.name: value(option.name) for option in OPTIONS}
    return TimingSettings(**{name: tuple(v) if isinstance(v, list) else v for name, v in given.items() if v is not None})


@dataclass(eq=False)  # a plug-in: pytest keeps plug-ins in sets
class TimingRequest:
    """The pytest plug-in `python -m bench` hands its own pytest run: what to time, and where the records go."""

    settings: TimingSettings
    device: str
    implementations: list[str]
    records: list[TimedCase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def pytest_runtest_setup(self, item) -> None:
        # In an isolated child this restarts the parent's timeout and names the case a crash would be on.
        isolate.heartbeat(f"timing {item.nodeid}")

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            self.failures.append(f"{report.nodeid}: {crash.message if crash else report.longrepr}")


def time_case(benchmark, impl: Implementation, case: Shape | ModelCase, mode: str, dtype: torch.dtype,
              device: torch.device, settings: TimingSettings) -> TimedCase:
    """Prepare the case, time its first call, then pytest-benchmark's rounds, then its peak memory."""
    timer = instruments.synchronised_timer(device)
    flush = instruments.cache_flusher(device)
    instruments.settle_heap(device)
    whole_model = isinstance(case, ModelCase)
    run = (model_runner if whole_model else runner)(impl, case, mode, dtype, device)

    first_call_ms = instruments.elapsed_ms(timer, run)  # with one-off work: torch.compile's compilation, say
    for _ in range(WARMUP_ROUNDS):
        run()
    one_ms = max(instruments.elapsed_ms(timer, run), 1e-3)
    rounds = int(np.clip(settings.seconds * 1e3 / one_ms, settings.min_rounds, settings.max_rounds))
    benchmark.group = f"{case.name} {dtype_name(dtype)} {mode}"
    benchmark.pedantic(run, setup=flush, rounds=rounds, iterations=1, warmup_rounds=0)
    samples_ms = np.asarray(benchmark.stats.stats.data) * 1e3

    peaks = []
    for _ in range(MEMORY_RUNS):
        with instruments.PeakMemory(device) as peak:
            run()
        peaks.append(peak.bytes)
    p20, p50, p80 = np.percentile(samples_ms, [20, 50, 80])
    geometry = case.fields()
    record = TimedCase(
        implementation=impl.name, baseline=impl.baseline, device=device.type, dtype=dtype_name(dtype), mode=mode,
        suite=settings.suite, shape=geometry.pop("shape"), geometry=geometry, threads=torch.get_num_threads(),
        rounds=len(samples_ms), first_call_ms=first_call_ms, p20_ms=float(p20), p50_ms=float(p50),
        p80_ms=float(p80), peak_memory_bytes=int(np.median(peaks)),
    )
    if not whole_model:
        return replace(record, bytes_moved=traffic.bytes_moved(case, mode, dtype))
    spent = profile.breakdown(run, device)
    return replace(record, core_share=spent[profile.CORE] / sum(spent.values()),
                   profile_clock=profile.profiler_clock(device)[2], profile_ms=spent)


def pytest_arguments(settings: TimingSettings, record: Path) -> list[str]:
    """pytest's own options for a timing run: pytest-benchmark's record to `record`, quiet otherwise."""
    test = "test_model" if is_model_suite(settings.suite) else "test_operator"
    return [
        f"{BENCH_TESTS}::{test}", "-p", "no:cacheprovider", "-v", "--rootdir", str(BENCH_TESTS.parent.parent),
        # The caller has imported hypothesis and the harness already; the timing tests assert nothing.
        "--assert=plain",
        f"--benchmark-json={record}", "--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name",
        # As timeit does: a garbage collection landing in one repetition is noise, not the implementation's cost.
        "--benchmark-disable-gc",
    ]


@contextlib.contextmanager
def _not_a_distributed_worker():
    """pytest-benchmark switches itself off where PYTEST_XDIST_WORKER is set, as it is when python -m bench
    runs inside a test spread by pytest-xdist: the timing is not one of that run's workers."""
    inherited = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("PYTEST_XDIST")}
    try:
        yield
    finally:
        os.environ.update(inherited)


@dataclass
class Timed:
    """What timing one implementation gave: its records, pytest-benchmark's JSON record of them, and the
    cases that failed (a test raising: the others are still timed)."""

    records: list[TimedCase]
    benchmark_json: dict
    failures: list[str]


def time_implementation(impl: Implementation, settings: TimingSettings, device: torch.device) -> Timed:
    """Time impl on every case of the settings in this process, with pytest and pytest-benchmark.
    A parity.isolate task, with the settings as its one item."""
    request = TimingRequest(settings, str(device), [impl.name])
    with tempfile.TemporaryDirectory(prefix="dcnv3-timing-") as scratch, _not_a_distributed_worker():
        record = Path(scratch) / "benchmark.json"
        status = pytest.main(pytest_arguments(settings, record), plugins=[request])
        if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
            raise RuntimeError(f"pytest stopped with {pytest.ExitCode(status).name} while timing {impl.name}")
        return Timed(request.records, json.loads(record.read_text()) if record.exists() else {}, request.failures)
