"""The parity sweep spread over the host's devices by pytest-xdist: `python -m parity --devices all|N|0,3,5`.

One xdist worker per device, started with the device's visible-devices variable set (an execnet
`popen//env:` spec, impls/devices.py VISIBLE_DEVICES), so that its runtime sees that one device, as
index 0, from the start; on cpu the workers share the cores. Every worker collects the same items from
the controller's drawn sweep, shipped to them in a file, one item per implementation and case, a case's items side by side: xdist's load
scheduling hands out runs of consecutive items, so a worker mostly computes a case's float64 reference and
the baseline's errors once for all implementations (runner.Memo). Not loadgroup, which would keep a case
on one worker always: in pytest-xdist 3.8 its scheduler fails with an INTERNALERROR once a crashed worker
is replaced (pytest-xdist issues #1189 and #1362), and a dying port is what this must survive. The controller merges the rows the items report in the sweep's order: the union over the
workers is the single-process sweep, row for row.

A worker that dies (a segfault, an abort) or outlives the per-case time limit (faulthandler ends it)
costs the item it was on: that implementation's rows of that case come back failing, saying so, and
xdist starts a new worker on the same device for the rest.
"""

from __future__ import annotations

import faulthandler
import json
import pickle
import re
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import impls
from impls import devices, external
from impls.cli import DTYPES
from parity import runner
from parity.thresholds import Thresholds

OPTION = "--parity-spread"
ITEM = re.compile(r"::(?P<impl>.+)\[case(?P<case>\d+)\]")


@dataclass(frozen=True)
class Sweep:
    """What every worker needs to collect and run the sweep, passed on their command line as JSON."""

    device_type: str
    implementations: list[str]
    dtypes: list[str]
    compiled_examples: int | None
    thresholds: str
    impl_module: list[str]
    timeout: float
    # The controller's sys.path: an --impl-module may need entries added after xdist froze its copy.
    path: list[str]


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
            why = report.longreprtext.strip().splitlines()
            self.lost.append((item["impl"], int(item["case"]), why[-1] if why else "no report"))


def on_workers(items: Path, plugin: str, option: str, payload: dict, device_type: str, workers: list[int | None],
               collector) -> None:
    """Run the items that `plugin` collects from the file `items` (given `option`=JSON of `payload`) on
    pytest-xdist workers pinned to `workers` (impls/devices.py), `collector` seeing their reports here.
    pytest-benchmark stays off: where a worker times, it runs a session of its own (bench/spread.py)."""
    specs = [f"--tx={spec}" for spec in devices.xdist_workers(device_type, workers)]
    status = pytest.main([str(items), "-p", plugin, "-p", "no:cacheprovider", "-p", "no:benchmark", "-q",
                          "--no-header", "--dist", "load", *specs, f"{option}={json.dumps(payload)}"],
                         plugins=[collector])
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):  # failed items: a worker died on them
        raise RuntimeError(f"the pytest-xdist run of {items.name} stopped: {pytest.ExitCode(status).name}")


def run(sweep: Sweep, workers: list[int | None], implementations, dtypes, cases, thresholds) -> tuple[pd.DataFrame, Counter]:
    """The rows of `cases`, in the single-process order, and how many items each device ran."""
    collector = Collector()
    # The workers take the cases drawn here rather than draw them again: hypothesis mixes constants from
    # the modules a process has loaded into what it draws, so one seed draws differently elsewhere.
    with tempfile.TemporaryDirectory(prefix="parity-spread-") as scratch:
        drawn = Path(scratch) / "cases.pickle"
        drawn.write_bytes(pickle.dumps(cases))
        on_workers(Path(__file__), "parity.spread", OPTION, {**asdict(sweep), "cases": str(drawn)},
                   sweep.device_type, workers, collector)
    rows = pd.DataFrame(collector.rows)
    lost = [runner.failed_rows(next(i for i in implementations if i.name == name), cases[case], case, dtypes,
                               sweep.device_type, thresholds, f"the worker died on this case ({why})")
            for name, case, why in collector.lost]
    rows = pd.concat([rows, *lost], ignore_index=True) if lost else rows
    return runner.in_sweep_order(rows, implementations, dtypes), collector.items_per_device


def pytest_addoption(parser):
    parser.addoption(OPTION, help="(internal) the sweep a python -m parity --devices worker runs, as JSON")


def pytest_collect_file(file_path, parent):
    if file_path == Path(__file__) and parent.config.getoption(OPTION):
        return SweepFile.from_parent(parent, path=file_path)
    return None


class SweepFile(pytest.File):
    def collect(self):
        sweep, cases = _payload(self.config)
        state = _worker(sweep, cases)
        for index in range(len(state["cases"])):
            for impl in state["implementations"]:
                yield SweepItem.from_parent(self, name=f"{impl.name}[case{index}]", impl=impl, index=index)


class SweepItem(pytest.Item):
    def __init__(self, *, impl, index, **kwargs):
        super().__init__(**kwargs)
        self.impl, self.index = impl, index

    def runtest(self):
        sweep, cases = _payload(self.config)
        state = _worker(sweep, cases)
        # A hang in a kernel holds the interpreter too: faulthandler's own thread ends the worker.
        faulthandler.dump_traceback_later(sweep.timeout, exit=True)
        try:
            rows = runner.run([self.impl], state["dtypes"], state["cases"], state["device"], state["thresholds"],
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


def _payload(config) -> tuple[Sweep, str]:
    """The sweep a worker was given, and the file of its cases."""
    payload = json.loads(config.getoption(OPTION))
    cases = payload.pop("cases")
    return Sweep(**payload), cases


def _worker(sweep: Sweep, cases: str) -> dict:
    """A worker's implementations, dtypes, cases, device and memo: built once, on first use."""
    if not _STATE:
        sys.path[:] = sweep.path
        external.load(sweep.impl_module)
        _STATE.update(
            implementations=[impls.get(name) for name in sweep.implementations],
            dtypes=[DTYPES[name] for name in sweep.dtypes],
            cases=pickle.loads(Path(cases).read_bytes()),
            device=devices.resolve(sweep.device_type),
            thresholds=Thresholds.load(Path(sweep.thresholds)),
            memo=runner.Memo({}, {}),
            label=devices.pinned_label(sweep.device_type),
        )
    return _STATE
