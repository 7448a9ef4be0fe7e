"""noxfile.run_lanes, which `nox -s ci` runs CI through: lanes at once, each line named, failures kept apart."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("nox", reason="the noxfile needs nox, which `python -m pip install nox` installs")
import noxfile  # noqa: E402  (after the skip: the noxfile imports nox)


class _Session:
    def error(self, message: str):
        raise RuntimeError(message)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_command_ends_its_own_lane_and_fails_the_session_once_every_lane_has_ended(capsys):
    lanes = {"failing": [(_python("import sys; sys.exit(3)"), {}), (_python("print('after the failure')"), {})],
             "slow": [(_python("import time; time.sleep(1); print('slow done')"), {})]}
    with pytest.raises(RuntimeError, match=r"failing: `.*` exited with 3"):
        noxfile.run_lanes(_Session(), lanes)
    printed = capsys.readouterr().out
    assert "after the failure" not in printed
    assert "   slow | slow done" in printed and "failing | exit status 3 after" in printed


def test_lanes_get_one_thread_each_their_own_variables_and_all_but_the_first_a_lower_priority(capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    report = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['TORCHINDUCTOR_COMPILE_THREADS'], " \
             "os.environ.get('LANE'), os.nice(0))"
    base = os.nice(0)
    noxfile.run_lanes(_Session(), {"first": [(_python(report), {"LANE": "one"})], "other": [(_python(report), {})]},
                      first="first")
    printed = capsys.readouterr().out
    assert f"first | 1 1 one {base}" in printed
    assert f"other | 1 1 None {min(base + 5, 19)}" in printed
