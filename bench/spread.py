"""The benchmark's timing spread over the host's accelerators by pytest-xdist: `python -m bench --devices`.

One xdist worker per device, pinned to it before its runtime starts (impls/devices.py xdist_workers), so
no two workers ever time on one device. An item is one shape (or model) of the suite: the worker times
the baseline and every other implementation on it with bench/timing.py, the code a single-device run
uses, and labels the records with the host's device index (`npu:3`), which is in the speedup's join
(bench/records.py CASE_KEYS): a speedup is always against the baseline timed on the same device. A
worker that dies costs its shape; xdist starts another on the same device for the rest.

On cpu the workers would share the cores and time each other's load, so `python -m bench` times cpu in
its own process whatever --devices says (the gate before it still spreads).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytest

from bench.records import TimedCase
from bench.timing import TimingSettings, time_implementation
from impls import devices
from impls.registry import REGISTRIES
from parity.spread import last_line, on_workers, own_file, payload_of

OPTION = "--bench-spread"


@dataclass(frozen=True)
class Timing:
    """What every worker times."""

    device_type: str
    implementations: list[str]  # the baseline first
    settings: TimingSettings
    impl_module: list[str]
    # The controller's sys.path: an --impl-module may need entries added after xdist froze its copy.
    path: list[str] = field(default_factory=lambda: list(sys.path))

    @property
    def operator(self) -> str:
        return self.settings.op


class Collector:
    def __init__(self):
        self.records: list[dict] = []
        self.benchmarks: list[dict] = []
        self.machine: dict = {}
        self.lost: dict[str, str] = {}

    def pytest_runtest_logreport(self, report):
        reported = dict(report.user_properties)
        if report.when == "call" and "records" in reported:
            self.records += reported["records"]
            self.benchmarks += reported["benchmarks"]
            self.machine = self.machine or reported["machine"]
            self.lost.update(reported["failures"])
        elif report.failed and "records" not in reported:
            self.lost[report.nodeid.split("::")[-1]] = f"the worker died on this shape ({last_line(report)})"


def run(timing: Timing, workers: list[int]):
    """(records, pytest-benchmark's JSON record of them all, {what: what went wrong}) over the workers."""
    collector = Collector()
    on_workers(Path(__file__), "bench.spread", OPTION, timing, timing.device_type, workers, collector)
    benchmark_json = {**collector.machine, "benchmarks": collector.benchmarks}
    return [TimedCase(**record) for record in collector.records], benchmark_json, collector.lost


def pytest_addoption(parser):
    parser.addoption(OPTION, help="(internal) the file of what a python -m bench --devices worker times")


def pytest_collect_file(file_path, parent):
    return own_file(file_path, parent, OPTION, SuiteFile)


class SuiteFile(pytest.File):
    def collect(self):
        for case in payload_of(self.config, OPTION).settings.cases:
            yield ShapeItem.from_parent(self, name=case.name)


class ShapeItem(pytest.Item):
    def runtest(self):
        timing = payload_of(self.config, OPTION)
        settings = replace(timing.settings, shape=(self.name,))
        device, label = devices.resolve(timing.device_type), devices.pinned_label(timing.device_type)
        records, benchmarks, failures, machine = [], [], {}, {}
        for name in timing.implementations:
            timed = time_implementation(REGISTRIES[settings.op].get(name), settings, device)
            records += [_plain(asdict(replace(record, device=label))) for record in timed.records]
            benchmarks += timed.benchmark_json.get("benchmarks", [])
            machine = machine or {k: v for k, v in timed.benchmark_json.items() if k != "benchmarks"}
            if timed.failures:
                failures[name] = f"failed while timing on {label}: " + "; ".join(timed.failures)
        self.user_properties += [("records", records), ("benchmarks", _plain(benchmarks)), ("machine", _plain(machine)),
                                 ("failures", failures)]

    def reportinfo(self):
        return self.path, None, self.name


def _plain(value):
    """`value` in the plain Python types execnet carries (numpy scalars as Python ones)."""
    return json.loads(json.dumps(value, default=lambda scalar: scalar.item()))
