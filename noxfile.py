"""Sessions: `nox -s tests` (README's test command) and `nox -s parity` (the gate).

Every session's virtualenv sees the interpreter's site-packages, so the host's
own torch (and, on Ascend hosts, torch_npu with CANN) is the one used: a
session never installs torch itself, only the harness and its other needs.
Options after `--` pass through, e.g. `nox -s parity -- --device cuda --examples 200`.
"""

from __future__ import annotations

import time

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
HOST_SITE = ["--system-site-packages"]


def install_harness(session: nox.Session) -> None:
    session.install("-e", ".")


@nox.session(venv_params=HOST_SITE)
def tests(session: nox.Session) -> None:
    """The CPU parity gate, then the test suite (hypothesis profile `ci` under CI=true, `dev` otherwise)."""
    install_harness(session)
    session.run("python", "-m", "parity", "--device", "cpu")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(venv_params=HOST_SITE)
def parity(session: nox.Session) -> None:
    """The parity gate on the best device present, into reports/parity-<timestamp>/."""
    install_harness(session)
    out = f"reports/parity-{time.strftime('%Y%m%d-%H%M%S')}"
    session.run("python", "-m", "parity", "--out", out, *session.posargs)


@nox.session(name="parity-thorough", venv_params=HOST_SITE)
def parity_thorough(session: nox.Session) -> None:
    """The property tests with the `thorough` hypothesis profile (600 examples each): minutes, not CI."""
    install_harness(session)
    session.run("python", "-m", "pytest", "parity", *session.posargs, env={"HYPOTHESIS_PROFILE": "thorough"})
