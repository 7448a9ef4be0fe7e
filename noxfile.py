"""Sessions: tests, parity, parity-thorough, bench (best device), bench-cpu,
bench-cuda, bench-npu, build-ascendc and report.

Every session's virtualenv sees the interpreter's site-packages, so the host's
own torch (and, on Ascend hosts, torch_npu with CANN) is the one used. Options
after `--` pass through, e.g. `nox -s bench-cpu -- --suite quick`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
HOST_SITE = ["--system-site-packages"]
HAS_TRITON = "import importlib.util as u; print(u.find_spec('triton') is not None)"
BEST_DEVICE = "from impls.devices import best_device_type as b; print(b())"


def install_harness(session: nox.Session) -> None:
    session.install("-e", ".")


def install_harness_keeping_host_torch(session: nox.Session) -> None:
    """The harness and its needs except torch: pip must never replace an Ascend host's torch."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    needs = [d for d in project["dependencies"] if not d.replace(" ", "").startswith("torch")]
    session.install(*needs)
    session.install("--no-deps", "-e", ".")


def run_bench(session: nox.Session, device: str) -> None:
    """Parity gate, benchmark and report into reports/<device>-<timestamp>/."""
    # Device, versions, timing warnings and implementations; one sentence and exit 1 where the device is absent.
    session.run("python", "-m", "bench.preflight", "--device", device)
    out = f"reports/{device}-{time.strftime('%Y%m%d-%H%M%S')}"
    session.run("python", "-m", "bench", "--device", device, "--out", out, *session.posargs)
    session.run("python", "-m", "reports", out)


def install_triton_unless_present(session: nox.Session) -> None:
    """Community Triton for its CPU interpreter, only where no Triton is installed: a CUDA torch's
    pinned Triton, or triton-ascend (which shares the `triton` package name), must stay as it is."""
    present = session.run("python", "-c", HAS_TRITON, silent=True).strip() == "True"
    if not present:
        session.install("triton==3.9.0")


@nox.session(venv_params=HOST_SITE)
def tests(session: nox.Session) -> None:
    """The CPU parity gate, then the test suite (hypothesis profile `ci` under CI=true, `dev` otherwise).

    The Triton kernel takes part through Triton's CPU interpreter."""
    install_harness(session)
    install_triton_unless_present(session)
    interpreter = {"TRITON_INTERPRET": "1"}
    session.run("python", "-m", "parity", "--device", "cpu", env=interpreter)
    session.run("python", "-m", "pytest", *session.posargs, env=interpreter)


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


@nox.session(name="bench-cpu", venv_params=HOST_SITE)
def bench_cpu(session: nox.Session) -> None:
    install_harness(session)
    run_bench(session, "cpu")


@nox.session(name="bench-cuda", venv_params=HOST_SITE)
def bench_cuda(session: nox.Session) -> None:
    install_harness(session)
    run_bench(session, "cuda")


@nox.session(name="bench-npu", venv_params=HOST_SITE)
def bench_npu(session: nox.Session) -> None:
    """On the host's own torch + torch_npu + CANN: installs neither torch nor torch_npu."""
    install_harness_keeping_host_torch(session)
    run_bench(session, "npu")


@nox.session(name="build-ascendc", venv_params=HOST_SITE)
def build_ascendc(session: nox.Session) -> None:
    """Build the Ascend C kernel (CMake, CANN, torch_npu); names what is missing anywhere else."""
    install_harness_keeping_host_torch(session)
    session.run("python", "-m", "impls.ascendc", *session.posargs)


@nox.session(venv_params=HOST_SITE)
def bench(session: nox.Session) -> None:
    """The main job: parity gate, benchmark and report on the best device present (npu, cuda, cpu)."""
    install_harness(session)
    run_bench(session, session.run("python", "-c", BEST_DEVICE, silent=True).strip())


@nox.session(venv_params=HOST_SITE)
def report(session: nox.Session) -> None:
    """Rebuild reports: `nox -s report -- reports/cpu-2026... [--compare OLD_DIR]` (default: every run folder)."""
    install_harness(session)
    runs = session.posargs or [str(p) for p in sorted(Path("reports").glob("*-*")) if (p / "results.csv").exists()]
    if not runs:
        session.error("no run folder with results.csv under reports/; run nox -s bench first")
    session.run("python", "-m", "reports", *runs)
