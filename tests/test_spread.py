"""`python -m parity --devices`: the sweep spread over pytest-xdist workers (parity/spread.py) gives the
single-process sweep's rows, and a worker that dies costs its item, not the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import impls
from bench.run import main as bench_main
from impls import devices
from parity import gate, runner
from parity.compare import expected
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds

pytest.importorskip("xdist", reason="--devices spreads the sweep with pytest-xdist, not installed here")


def test_a_two_worker_sweep_on_cpu_is_the_single_process_sweep_row_for_row(tmp_path):
    """The same seed, in-process and over two xdist workers: the same rows in the same order (xdist's workers
    compute as this process does; the isolated children of the default gate can differ in a mean's last bit)."""
    common = ["--device", "cpu", "--impl", "grid_sample", "optimized", "--dtype", "float32", "float16",
              "--examples", "3", "--seed", "5"]
    assert gate.main([*common, "--no-isolate", "--out", str(tmp_path / "one")]) == 0
    assert gate.main([*common, "--devices", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (pd.read_csv(tmp_path / name / "parity.csv") for name in ("one", "two"))
    assert (one.groupby(["implementation", "dtype"])["case"].nunique() == len(REGRESSIONS) + 3).all()
    assert len(one.groupby(["implementation", "dtype"])) == 4
    pd.testing.assert_frame_equal(two, one)
    spread_line = (tmp_path / "two" / "parity.md").read_text()
    assert "Spread over cpu (gw0) (" in spread_line and "cpu (gw1) (" in spread_line


def test_a_worker_computes_a_cases_reference_and_baseline_once_for_every_implementation(monkeypatch):
    """A worker runs one implementation and case at a time (spread.SweepItem); the memo carries the case's
    float64 reference and the baseline's errors from one to the next."""
    computed = []
    monkeypatch.setattr(runner, "expected", lambda problem, dtype: computed.append(dtype) or expected(problem, dtype))
    memo, cases = runner.Memo({}, {}), runner.sweep(0, 0)
    for name in ("grid_sample", "optimized"):
        rows = runner.run([impls.get(name)], [torch.float32], cases, torch.device("cpu"), Thresholds.load(),
                          progress=False, isolate=False, indices={1}, memo=memo)
        assert set(rows["case"]) == {1} and rows["pass"].all()
    assert computed == [torch.float32] and set(memo.yardsticks) == {(1, torch.float32)}


@pytest.mark.parametrize("port", ["segfaults", "hangs"])
def test_a_worker_that_dies_costs_its_item_and_a_new_worker_goes_on(port, tmp_path):
    status = gate.main(["--device", "cpu", "--devices", "2", "--impl-module", f"misbehaving_ports:{port}",
                        "--impl", port, "grid_sample", "--dtype", "float32", "--examples", "2", "--timeout", "3",
                        "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "parity.csv", keep_default_na=False)
    assert status == 1
    mine, baseline = rows[rows["implementation"] == port], rows[rows["implementation"] == "grid_sample"]
    assert baseline["pass"].all() and set(baseline["case"]) == set(mine["case"])
    by_batch = mine.groupby("N")
    died = by_batch.get_group(2)
    assert not died["pass"].any() and died["error"].str.startswith("the worker died on this case").all()
    assert by_batch.get_group(1)["pass"].all()
    assert "Spread over cpu (gw" in (tmp_path / "parity.md").read_text()


@pytest.mark.parametrize("device_type, spec, message", [
    ("cpu", "0", "--devices 0: on cpu, 'all' or a worker count in [1, "),
    ("cpu", "999", "--devices 999: on cpu, 'all' or a worker count in [1, "),
    ("cpu", "0,1", "--devices 0,1: on cpu, 'all' or a worker count"),
])
def test_a_bad_devices_spec_is_refused_naming_it(device_type, spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        devices.worker_devices(device_type, spec)


def test_cpu_workers_are_at_most_the_cores():
    assert devices.worker_devices("cpu", "all") == [None] * devices.cpu_cores()
    assert devices.worker_devices("cpu", "1") == [None]


def test_devices_is_refused_with_workers_or_a_device_index(capsys):
    for options in (["--workers", "2"], ["--device", "cuda:1"]):
        with pytest.raises(SystemExit) as exited:
            gate.main(["--devices", "2", *options])
        assert exited.value.code == 2
    assert "--devices spreads the case sweep of one device type" in capsys.readouterr().err


def test_on_cpu_the_benchmark_gates_over_the_workers_and_times_in_one_process(tmp_path):
    assert bench_main(["--device", "cpu", "--devices", "2", "--suite", "quick", "--shape", "q14-G2D8", "--impl",
                       "grid_sample", "optimized", "--mode", "forward", "--seconds", "0.01", "--parity-examples", "0",
                       "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert set(rows["device"]) == {"cpu"} and len(rows) == 2
    timed_on = json.loads((tmp_path / "environment.json").read_text())["timed_on"]
    assert timed_on == ["cpu", "one process: cpu workers would time each other's load"]


def test_pytest_takes_devices_as_its_own_xdist_workers():
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "pytest", "parity/test_parity.py", "-p", "no:cacheprovider", "-k",
               "grid_sample-float32", "--devices"]
    spread = subprocess.run([*command, "2"], capture_output=True, text=True, cwd=root)
    assert spread.returncode == 0 and "2 workers [" in spread.stdout, spread.stdout[-2000:]
    refused = subprocess.run([*command, "3,4"], capture_output=True, text=True, cwd=root)
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR and "--devices 3,4: on cpu" in refused.stderr
