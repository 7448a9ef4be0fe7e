"""The parity sweep spread over the host's devices by pytest-xdist: `python -m parity --devices all|N|0,3,5`.

One xdist worker per device, started with the device's visible-devices variable set (an execnet
`popen//env:` spec, impls/devices.py VISIBLE_DEVICES), so that its runtime sees that one device, as
index 0, from the start; on cpu the workers share the cores. The controller ships the workers the cases
it drew and its bounds (`on_workers`: one pickled file), rather than let each draw the sweep again:
hypothesis mixes constants from the modules a process has loaded into what it draws, so one seed draws
differently in another process.

Every worker collects the same items, one per implementation and case, a case's items side by side:
xdist's load scheduling hands out runs of consecutive items, so a worker mostly computes a case's
float64 reference and the baseline's errors once for all implementations (runner.Memo). Not
loadgroup, which would keep a case on one worker always: in pytest-xdist 3.8 its scheduler fails with
an INTERNALERROR once a crashed worker is replaced (pytest-xdist issues #1189 and #1362), and a dying
port is what this must survive. The controller merges the rows the items report in the sweep's order:
the union over the workers is the single-process sweep, row for row.

A worker that dies (a segfault, an abort) or outlives the per-case time limit (faulthandler ends it)
costs the item it was on: that implementation's rows of that case come back failing, saying so, and
xdist starts a new worker on the same device for the rest.
"""

from __future__ import annotations

import faulthandler
import pickle
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from impls import devices, external
from impls.registry import REGISTRIES
from parity import runner
from parity.thresholds import Thresholds

OPTION = "--parity-spread"
ITEM = re.compile(r"::(?P<impl>.+)\[case(?P<case>\d+)\]")


@dataclass(frozen=True)
class Sweep:
    """What every worker runs: the controller's cases, implementations, dtypes and bounds."""

    device_type: str
    implementations: list[str]
    dtypes: list
    cases: list
    thresholds: Thresholds
    compiled_examples: int | None
    impl_module: list[str]
    timeout: float
    operator: str = "dcnv3"
    # The controller's sys.path: an --impl-module may need entries added after xdist froze its copy.
    path: list[str] = field(default_factory=lambda: list(sys.path))

    @property
    def registry(self):
        return REGISTRIES[self.operator]


def on_workers(items: Path, plugin: str, option: str, payload, device_type: str, workers: list[int | None],
               collector) -> None:
    """Run the items that `plugin` collects from the file `items` on pytest-xdist workers pinned to
    `workers` (impls/devices.py), handing them `payload` (`option` names its pickled file: payload_of
    reads it there) and `collector` seeing their reports here. pytest-benchmark stays off: where a
    worker times, it runs a session of its own (bench/spread.py)."""
    specs = [f"--tx={spec}" for spec in devices.xdist_workers(device_type, workers)]
    with tempfile.TemporaryDirectory(prefix="dcnv3-spread-") as scratch:
        handed = Path(scratch) / "payload.pickle"
        handed.write_bytes(pickle.dumps(payload))
        status = pytest.main([str(items), "-p", plugin, "-p", "no:cacheprovider", "-p", "no:benchmark", "-q",
                              "--no-header", "--dist", "load", *specs, f"{option}={handed}"], plugins=[collector])
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):  # failed items: a worker died on them
        raise RuntimeError(f"the pytest-xdist run of {items.name} stopped: {pytest.ExitCode(status).name}")


_PAYLOADS: dict = {}


def payload_of(config, option: str):
    """In a worker: the payload on_workers handed it, read once; its sys.path and --impl-module as the
    controller's."""
    if option not in _PAYLOADS:
        payload = pickle.loads(Path(config.getoption(option)).read_bytes())
        sys.path[:] = payload.path
        external.load(payload.impl_module, payload.operator)
        _PAYLOADS[option] = payload
    return _PAYLOADS[option]


def own_file(file_path, parent, option: str, kind):
    """pytest_collect_file for a plug-in that collects its own module: `kind` for it where `option` is set."""
    if file_path == Path(sys.modules[kind.__module__].__file__) and parent.config.getoption(option):
        return kind.from_parent(parent, path=file_path)
    return None


def last_line(report) -> str:
    """What a failed report says last: for a worker that died, xdist's 'worker ... crashed while running ...'."""
    lines = report.longreprtext.strip().splitlines()
    return lines[-1] if lines else "no report"


class Collector:
    """The controller's side: the rows each item reported, which device ran it, and what was lost."""

    def __init__(self):
        self.rows: list[dict] = []
        self.items_per_device: Counter = Counter()
        self.lost: list[tuple[str, int, str]] = []  # implementation, case, why

    def pytest_runtest_logreport(self, report):
        reported = dict(report.user_properties)
        if report.when == "call" and "rows" in reported:
            self.rows += reported["rows"]
            self.items_per_device[reported["device"]] += 1
        elif report.failed and "rows" not in reported:
            item = ITEM.search(report.nodeid)
            self.lost.append((item["impl"], int(item["case"]), last_line(report)))


def run(sweep: Sweep, workers: list[int | None]) -> tuple[pd.DataFrame, Counter]:
    """The rows of the sweep's cases, in the single-process order, and how many items each device ran."""
    collector = Collector()
    on_workers(Path(__file__), "parity.spread", OPTION, sweep, sweep.device_type, workers, collector)
    rows = pd.DataFrame(collector.rows)
    lost = [runner.failed_rows(sweep.registry.get(name), sweep.cases[case], case, sweep.dtypes, sweep.device_type,
                               sweep.thresholds, f"the worker died on this case ({why})")
            for name, case, why in collector.lost]
    rows = pd.concat([rows, *lost], ignore_index=True) if lost else rows
    return runner.in_sweep_order(rows, sweep.implementations, sweep.dtypes, sweep.operator), collector.items_per_device


def pytest_addoption(parser):
    parser.addoption(OPTION, help="(internal) the file of the sweep a python -m parity --devices worker runs")


def pytest_collect_file(file_path, parent):
    return own_file(file_path, parent, OPTION, SweepFile)


class SweepFile(pytest.File):
    def collect(self):
        sweep = payload_of(self.config, OPTION)
        for index in range(len(sweep.cases)):
            for name in sweep.implementations:
                yield SweepItem.from_parent(self, name=f"{name}[case{index}]", impl=sweep.registry.get(name),
                                             index=index)


class SweepItem(pytest.Item):
    def __init__(self, *, impl, index, **kwargs):
        super().__init__(**kwargs)
        self.impl, self.index = impl, index

    def runtest(self):
        sweep, state = payload_of(self.config, OPTION), _worker(self.config)
        # A hang in a kernel holds the interpreter too: faulthandler's own thread ends the worker.
        faulthandler.dump_traceback_later(sweep.timeout, exit=True)
        try:
            rows = runner.run([self.impl], sweep.dtypes, sweep.cases, state["device"], sweep.thresholds,
                              compiled_examples=sweep.compiled_examples, progress=False, isolate=False,
                              indices={self.index}, memo=state["memo"])
        finally:
            faulthandler.cancel_dump_traceback_later()
        # execnet carries plain Python values only.
        plain = [{key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}
                 for row in rows.to_dict("records")]
        self.user_properties += [("rows", plain), ("device", state["label"])]

    def reportinfo(self):
        return self.path, None, self.name


_STATE: dict = {}


def _worker(config) -> dict:
    """A worker's device, its label and the memo its items share: made once, on first use."""
    if not _STATE:
        device_type = payload_of(config, OPTION).device_type
        _STATE.update(device=devices.resolve(device_type), memo=runner.Memo({}, {}),
                      label=devices.pinned_label(device_type))
    return _STATE
