"""A pytest plug-in for the benchmark's child process: before each test, one line naming the
implementation and the test goes to the file in $DCNV3_BENCH_PROGRESS, so that `python -m bench`
can tell a hang (no new line for --timeout seconds) and name what crashed or hung (bench/run.py)."""

from __future__ import annotations

import os

PROGRESS = "DCNV3_BENCH_PROGRESS"


def pytest_runtest_setup(item) -> None:
    path = os.environ.get(PROGRESS)
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = params.get("bench_case") or params.get("model_case")
    if path and case:
        with open(path, "a") as progress:
            progress.write(f"{case[0].name}\t{item.nodeid}\n")
