"""The gate runs each implementation in a child process: a port that segfaults, aborts or hangs fails
the case it was on, a fresh child goes on with the rest, and the other implementations' rows are
all written (parity/isolate.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import run as bench_run
from bench import timing
from impls import DCNv3Params, external, registry
from parity import gate, isolate, runner
from parity.problems import Problem
from parity.thresholds import Thresholds

TESTS = Path(__file__).parent
ONE = Problem(batch=1, height=5, width=5, params=DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, 2, 4), seed=1)
# misbehaving_ports misbehave on a batch of two and only there.
CASES = [ONE, dataclasses.replace(ONE, batch=2), dataclasses.replace(ONE, seed=2)]


def gate_rows(tmp_path, port: str, *options: str) -> tuple[int, pd.DataFrame]:
    status = gate.main(["--device", "cpu", "--impl-module", f"misbehaving_ports:{port}", "--impl", port, "grid_sample",
                        "--dtype", "float32", "--examples", "2", "--out", str(tmp_path), *options])
    return status, pd.read_csv(tmp_path / "parity.csv", keep_default_na=False)


@pytest.mark.parametrize("port, failure", [
    ("segfaults", "crashed: SIGSEGV"),
    ("aborts", "crashed: SIGABRT"),
    ("hangs", "timed out after 3 s"),
])
def test_a_port_that_takes_its_process_down_fails_that_case_and_the_gate_goes_on(port, failure, tmp_path):
    status, rows = gate_rows(tmp_path, port, "--timeout", "3")
    assert status == 1
    mine, baseline = rows[rows["implementation"] == port], rows[rows["implementation"] == "grid_sample"]
    assert baseline["pass"].all() and set(baseline["case"]) == set(mine["case"])
    by_batch = mine.groupby("N")
    assert (by_batch.get_group(2)["error"] == failure).all() and not by_batch.get_group(2)["pass"].any()
    # The cases after a crash ran in a fresh child, and passed.
    assert by_batch.get_group(1)["pass"].all() and mine["case"].max() > by_batch.get_group(2)["case"].min()


def test_after_crashes_allowed_the_rest_is_not_run(monkeypatch):
    monkeypatch.setattr(isolate, "CRASHES_ALLOWED", 1)
    [port] = external.load(["misbehaving_ports:segfaults"])
    rows = runner.run([port], [torch.float32], CASES, torch.device("cpu"), Thresholds.load(), progress=False)
    errors = rows.groupby("case")["error"].first()
    assert errors[0] == "" and errors[1] == "crashed: SIGSEGV"
    assert errors[2] == "not run: segfaults crashed or hung 1 times (the last: crashed: SIGSEGV)"


def test_an_implementation_registered_only_here_says_to_run_it_in_process():
    local = registry.register("registered_here")(registry.get("grid_sample").fn)
    try:
        isolated = runner.run([local], [torch.float32], CASES[:1], torch.device("cpu"), Thresholds.load(), progress=False)
        in_process = runner.run([local], [torch.float32], CASES[:1], torch.device("cpu"), Thresholds.load(),
                              progress=False, isolate=False)
    finally:
        registry.remove("registered_here")
    assert not isolated["pass"].any() and isolated["error"].str.contains("run it with --no-isolate").all()
    assert in_process["pass"].all()


def test_no_isolate_runs_in_this_process(monkeypatch):
    def no_children(*args, **kwargs):
        raise AssertionError("--no-isolate started a child process")

    monkeypatch.setattr(runner, "isolated", no_children)
    assert gate.main(["--device", "cpu", "--impl", "grid_sample", "--dtype", "float32", "--examples", "0",
                      "--no-isolate"]) == 0


def test_a_port_that_crashes_while_timed_loses_its_own_rows_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    status = bench_run.main(["--device", "cpu", "--suite", "quick", "--mode", "forward", "--seconds", "0.02",
                             "--min-rounds", "2", "--parity-examples", "0", "--out", str(tmp_path),
                             "--impl-module", "misbehaving_ports:segfaults_when_timed", "--impl", "segfaults_when_timed",
                             "--isolate"])
    assert status == 1
    timed = pd.read_csv(tmp_path / "results.csv")
    assert set(timed["implementation"]) == {"grid_sample"} and len(timed) == 3
    # It passed parity (small images) and went down on the first benchmark shape over 300 pixels.
    lost = json.loads((tmp_path / "environment.json").read_text())["not_timed"]["segfaults_when_timed"]
    assert lost == "crashed: SIGSEGV while timing bench/test_bench.py::test_operator[segfaults_when_timed-q20-G4D16-forward-float32]"


def test_a_hang_while_timed_is_killed_and_named():
    """The timing child says which case it is on before each one (isolate.heartbeat): a hang is the silence
    after that, and the failure names the case."""
    hangs = external.load(["misbehaving_ports:hangs_when_timed"])[0]
    try:
        settings = timing.TimingSettings(suite="quick", mode=("forward",), seconds=0.0, min_rounds=1)
        [outcome] = isolate.isolated(timing.time_implementation, hangs, [settings], torch.device("cpu"), timeout=2)
    finally:
        registry.remove("hangs_when_timed")
    assert outcome.value is None
    assert outcome.error == ("timed out after 2 s while timing "
                             "bench/test_bench.py::test_operator[hangs_when_timed-q20-G4D16-forward-float32]")
