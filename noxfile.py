"""Sessions: ci (tests and npu-emulated at once), tests, npu-emulated, parity, parity-thorough, bench
(best device), bench-cpu, bench-cuda, bench-npu, build-ascendc and report.

Every session runs in the Python that runs nox (a venv, a conda env or a system
Python alike), with the torch already there, and on Ascend hosts the torch_npu
and CANN already there: a session installs only the harness's pure-Python needs
into that interpreter and never installs or replaces torch. (A virtualenv per
session, even with --system-site-packages, would see the base interpreter's
packages instead of the venv's: nox run from a venv then found no torch.)
Options after `--` pass through, e.g. `nox -s bench-cpu -- --suite quick`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import site
import subprocess
import sys
import tempfile
import threading
import time
import venv
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

nox.options.sessions = ["ci"]
PYTHON = sys.executable
ROOT = Path(__file__).parent
EMULATED_NPU = ROOT / "tests" / "emulated_npu"
HAS_TRITON = "import importlib.util as u; print(u.find_spec('triton') is not None)"
BEST_DEVICE = "from impls.devices import best_device_type as b; print(b())"
GATE_EXAMPLES = "20"
# The bounds were fitted on seeds 1 and 2 (parity/thresholds.toml); the thorough gate checks them on another.
THOROUGH_EXAMPLES, THOROUGH_SEED = "2000", "3"
# The emulated NPU's runs: small, since they prove the NPU code paths run, not the numbers again.
# (The Triton kernel's parity on the npu is in tests/test_npu_emulated.py: interpreted under
# coverage it costs minutes per sweep.)
EMULATED_GATE = ["--impl", "grid_sample", "optimized", "npu_deform_conv", "ascendc", "DCNv3Function",
                 "--impl-module", "stand_in_port:DCNv3Function", "--examples", "4"]
EMULATED_MSDA_GATE = ["--op", "msda", "--impl", "grid_sample", "optimized", "mx_driving", "--examples", "4"]
EMULATED_BENCH = ["--suite", "quick", "--impl", "grid_sample", "optimized", "npu_deform_conv",
                  "--seconds", "0.02", "--parity-examples", "4"]
# `nox -s bench-npu` from a user's venv: that the session runs there, not the numbers again.
EMULATED_VENV_BENCH = ["--suite", "quick", "--impl", "grid_sample", "--mode", "forward", "--seconds", "0.01",
                       "--parity-examples", "0"]
# Whole backbones on the smallest configuration (impls/internimage.py's mini): the model gate in every
# dtype for the native CPU kernels (interpreted, Triton would cost half a minute here), and on the emulated NPU.
MODEL_GATE = ["--model", "internimage-mini", "--impl", "optimized", "cpu_kernel"]
EMULATED_MODEL_GATE = ["--model", "internimage-mini", "--impl", "optimized", "npu_deform_conv", "--dtype", "float32"]
EMULATED_MODEL_BENCH = ["--suite", "model-internimage-mini", "--impl", "optimized", "--mode", "forward",
                        "--seconds", "0.05", "--parity-examples", "0"]


def python(session: nox.Session, *args, **kwargs):
    return session.run(PYTHON, *args, external=True, **kwargs)


def install_needs(session: nox.Session, *extra: str, deploy: bool = False) -> None:
    """The harness's dependencies except torch, into the interpreter running nox; with deploy, the
    deployment runtimes too (pyproject's `deploy` extra: CPU wheels, so for CPU runs)."""
    if importlib.util.find_spec("torch") is None:  # nox runs in PYTHON: the same interpreter
        session.error(f"nox runs under {PYTHON}, which cannot import torch: install torch there, "
                      "or run `python -m nox` with the Python that has it")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needs = [d for d in project["dependencies"] if not d.replace(" ", "").startswith("torch")]
    needs += project["optional-dependencies"]["deploy"] if deploy else []
    python(session, "-m", "pip", "install", "--quiet", *needs, *extra)


def run_bench(session: nox.Session, device: str) -> None:
    """Parity gate, benchmark and report into reports/<device>-<timestamp>/; on cpu with ONNX Runtime and
    OpenVINO among the implementations, for whoever deploys there."""
    if device == "cpu":
        install_needs(session, deploy=True)
    # Device, versions, timing warnings and implementations; one sentence and exit 1 where the device is absent.
    python(session, "-m", "bench.preflight", "--device", device)
    out = f"reports/{device}-{time.strftime('%Y%m%d-%H%M%S')}"
    python(session, "-m", "bench", "--device", device, "--out", out, *session.posargs)
    python(session, "-m", "reports", out)


def install_triton_unless_present(session: nox.Session) -> None:
    """Community Triton for its CPU interpreter, only where no Triton is installed: a CUDA torch's
    pinned Triton, or triton-ascend (which shares the `triton` package name), must stay as it is."""
    if python(session, "-c", HAS_TRITON, silent=True).strip() != "True":
        python(session, "-m", "pip", "install", "--quiet", "triton==3.9.0")


# A command of a lane: its argv and what it adds to the environment.
Command = tuple[list[str], dict[str, str]]


def run_lanes(session: nox.Session, lanes: dict[str, list[Command]], first: str | None = None) -> None:
    """The lanes at once, each lane's commands in order, every line they print shown as it comes after its
    lane's name; the session fails, naming each command that failed, once every lane has ended (a failing
    command ends its own lane only). The lanes other than `first` run at a lower priority (nice 5): `first`
    is one process's long chain of work, which an equal share of the cores would make the last to end.

    Why at once: no one step fills both cores of a 2-core CI machine for long (the gate waits on
    torch.compile's C++ builds, the NPU emulation runs one process at a time, pytest-xdist's two workers
    idle at the tail): README's "The emulated NPU (CI)" has the times, one after another and at once."""
    # With more lanes than cores, a process's own pools only add to the contention: one torch thread each
    # (unless the environment says otherwise; the tests that need several threads set them), and inductor
    # compiling in the process that asks instead of a pool of processes that each import torch first.
    one_each = {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    width = max(map(len, lanes))
    printing = threading.Lock()
    failed: list[str] = []

    def say(lane: str, line: str) -> None:
        with printing:
            sys.stdout.write(f"{lane:>{width}} | {line.rstrip()}\n")
            sys.stdout.flush()

    def run(lane: str, commands: list[Command]) -> None:
        for argv, env in commands:
            say(lane, f"$ {shlex.join(argv)}")
            started = time.monotonic()
            niced = argv if lane == first else ["nice", "-n", "5", *argv]
            process = subprocess.Popen(niced, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                       env={**one_each, **os.environ, "PYTHONUNBUFFERED": "1", **env})
            for line in process.stdout:
                say(lane, line)
            status = process.wait()
            say(lane, f"exit status {status} after {time.monotonic() - started:.0f} s")
            if status != 0:
                failed.append(f"{lane}: `{shlex.join(argv)}` exited with {status}")
                return

    threads = [threading.Thread(target=run, args=item) for item in lanes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        session.error("; ".join(failed))


# The lane run_lanes puts first: the DCNv3 gate, whose cold torch.compile compiles are the longest chain.
DCNV3_GATE_LANE = "dcnv3-gate"


def tests_lanes(pytest_options=()) -> dict[str, list[Command]]:
    """The CPU parity gates of both operators (DCNv3, MSDA), the model-level gate on the smallest backbone,
    and beside them the test suite (hypothesis profile `ci`, bounded and derandomized, unless
    HYPOTHESIS_PROFILE names another). The Triton kernel takes part through Triton's CPU interpreter."""
    interpreter = {"TRITON_INTERPRET": "1"}
    profile = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")}
    # The gate as CI runs it: every regression problem and GATE_EXAMPLES drawn ones (the
    # property tests draw their own); `nox -s parity` runs the default 200. In one process: on 2 cores
    # two pytest-xdist workers took 337 s against its 247 s (torch.compile's cold compiles dominate
    # both), and tests/test_spread.py proves the spread gives the single-process rows.
    others = [([PYTHON, "-m", "parity", "--op", "msda", "--device", "cpu", "--examples", GATE_EXAMPLES], interpreter),
              ([PYTHON, "-m", "parity", "--device", "cpu", *MODEL_GATE], interpreter)]
    return {DCNV3_GATE_LANE: [([PYTHON, "-m", "parity", "--device", "cpu", "--examples", GATE_EXAMPLES], interpreter)],
            "msda+model-gates": others,
            "pytest": [([PYTHON, "-m", "pytest", "-n", "2", *pytest_options], {**interpreter, **profile})]}


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The CPU gates and the test suite (tests_lanes); options after `--` go to pytest."""
    install_needs(session, deploy=True)
    install_triton_unless_present(session)
    run_lanes(session, tests_lanes(session.posargs), first=DCNV3_GATE_LANE)


def _venv_seeing(packages_of: str, where: Path) -> Path:
    """A plain venv (no system site-packages) in which this interpreter's packages are importable, as
    if installed into it: a user's venv holding torch and nox. Its own venvs would not see them."""
    venv.create(where, with_pip=False)
    site = next(where.glob("lib/python*/site-packages"))
    (site / "host.pth").write_text(packages_of + "\n")
    return where / "bin" / "python"


class EmulatedNpu:
    """Every NPU line of the harness, run on the emulated NPU (tests/emulated_npu): the NPU tests, the
    gate (the Ascend C kernel's .asc among its implementations, built against the emulated Ascend C API
    in tests/emulated_ascendc) and MSDA's gate with DrivingSDK's kernel, both on an emulated host of two
    NPUs so that their side-stream case runs on npu:1, preflight, the benchmark and its report (with the
    Ascend C kernel's emulated counts), then `nox -s bench-npu` itself from a fresh venv, with and
    without the emulation; then line coverage of the NPU branches, which must be complete."""

    NEEDS = "coverage>=7.10"

    def __init__(self, session: nox.Session):
        self.work = Path(tempfile.mkdtemp(prefix="npu-emulated-"))
        paths = os.pathsep.join([str(EMULATED_NPU), str(ROOT / "tests")])
        library = python(session, "-m", "emulated_ascendc", "build-library", env={"PYTHONPATH": str(ROOT / "tests")},
                         silent=True).strip().splitlines()[-1]
        self.env = {"PYTHONPATH": paths, "TRITON_INTERPRET": "1", "COVERAGE_RCFILE": str(ROOT / "pyproject.toml"),
                    "DCNV3_ASCENDC_LIBRARY": library}
        python(session, "-m", "coverage", "erase", env=self.env)
        user_venv = _venv_seeing(site.getsitepackages()[0], self.work / "venv")
        self.nox_in_venv = [str(user_venv), "-m", "nox", "-f", str(ROOT / "noxfile.py"), "-s", "bench-npu"]

    def lanes(self) -> dict[str, list[Command]]:
        measured = [PYTHON, "-m", "coverage", "run", "-m"]
        work, env, two_npus = self.work, self.env, {**self.env, "EMULATED_NPU_DEVICES": "2"}
        runs = [([*measured, "bench.preflight", "--device", "npu"], env),
                ([*measured, "parity", "--device", "npu", *EMULATED_GATE, "--out", str(work / "parity")], two_npus),
                ([*measured, "parity", "--device", "npu", *EMULATED_MSDA_GATE, "--out", str(work / "parity-msda")],
                 two_npus),
                ([*measured, "bench", "--device", "npu", *EMULATED_BENCH, "--out", str(work / "bench")], env),
                ([PYTHON, "-m", "emulated_ascendc", "counts", "--out", str(work / "bench")], env),
                ([*measured, "reports", str(work / "bench")], env),
                ([*measured, "parity", "--device", "npu", *EMULATED_MODEL_GATE], env),
                ([*measured, "bench", "--device", "npu", *EMULATED_MODEL_BENCH, "--out", str(work / "model")], env),
                ([*measured, "reports", str(work / "model")], env),
                ([*self.nox_in_venv, "--", *EMULATED_VENV_BENCH], env)]
        suite = [([*measured, "pytest", "-p", "no:cacheprovider", "tests/test_npu_emulated.py", "tests/test_preflight.py",
                   "--device", "npu"], env)]
        return {"npu-runs": runs, "npu-pytest": suite}

    def finish(self, session: nox.Session) -> None:
        absent = session.run(*self.nox_in_venv, env={"PYTHONPATH": ""}, external=True, success_codes=[1], silent=True)
        sentence = [line for line in absent.splitlines() if line.startswith("bench-npu: ")]
        if len(sentence) != 1 or "no NPU" not in sentence[0]:
            session.error(f"bench-npu without an NPU should stop with one sentence; it printed:\n{absent}")
        session.log(sentence[0])
        python(session, "-m", "coverage", "combine", env=self.env)
        python(session, "-m", "coverage", "json", "-o", str(self.work / "coverage.json"), env=self.env)
        python(session, "tests/npu_lines.py", str(self.work / "coverage.json"), env=self.env)


@nox.session(name="npu-emulated", venv_backend="none")
def npu_emulated(session: nox.Session) -> None:
    """The harness's NPU code on the emulated NPU (EmulatedNpu)."""
    install_needs(session, EmulatedNpu.NEEDS)
    install_triton_unless_present(session)
    emulated = EmulatedNpu(session)
    run_lanes(session, emulated.lanes())
    emulated.finish(session)


@nox.session(venv_backend="none")
def ci(session: nox.Session) -> None:
    """What CI runs: `tests` and `npu-emulated` at once (run_lanes says why); options after `--` go to the
    CPU suite's pytest."""
    install_needs(session, EmulatedNpu.NEEDS, deploy=True)
    install_triton_unless_present(session)
    emulated = EmulatedNpu(session)
    run_lanes(session, {**tests_lanes(session.posargs), **emulated.lanes()}, first=DCNV3_GATE_LANE)
    emulated.finish(session)


@nox.session(venv_backend="none")
def parity(session: nox.Session) -> None:
    """The parity gate on the best device present, into reports/parity-<timestamp>/."""
    install_needs(session)
    out = f"reports/parity-{time.strftime('%Y%m%d-%H%M%S')}"
    python(session, "-m", "parity", "--out", out, *session.posargs)


@nox.session(name="parity-thorough", venv_backend="none")
def parity_thorough(session: nox.Session) -> None:
    """Minutes, not CI: the gate on THOROUGH_EXAMPLES drawn cases of a seed the bounds were not fitted on
    (parity/thresholds.toml), into reports/parity-thorough-<timestamp>/ (MSDA's into ...-msda/), then the
    property tests of both operators with the
    `thorough` hypothesis profile (600 examples each), both on the best device type present, spread over
    every accelerator of it (`-- --devices N` or `-- --devices 0,3` for fewer). On cpu one worker unless
    `-- --devices N` asks for more: torch's threads already use every core, and two workers on 2 cores
    took 648 s against one's 493 s. Other options after `--` go to pytest."""
    install_needs(session)
    best = python(session, "-c", BEST_DEVICE, silent=True).strip()
    spread = argparse.ArgumentParser(add_help=False)
    spread.add_argument("--devices", default="1" if best == "cpu" else "all")
    chosen, pytest_options = spread.parse_known_args(session.posargs)
    out = f"reports/parity-thorough-{time.strftime('%Y%m%d-%H%M%S')}"
    python(session, "-m", "parity", "--device", best, "--devices", chosen.devices, "--examples", THOROUGH_EXAMPLES,
           "--seed", THOROUGH_SEED, "--compiled-examples", "10", "--out", out)
    python(session, "-m", "parity", "--op", "msda", "--device", best, "--devices", chosen.devices,
           "--examples", THOROUGH_EXAMPLES, "--seed", THOROUGH_SEED, "--out", f"{out}-msda")
    python(session, "-m", "pytest", "parity", "--device", best, "--devices", chosen.devices, *pytest_options,
           env={"HYPOTHESIS_PROFILE": "thorough"})


@nox.session(name="bench-cpu", venv_backend="none")
def bench_cpu(session: nox.Session) -> None:
    install_needs(session)
    run_bench(session, "cpu")


@nox.session(name="bench-cuda", venv_backend="none")
def bench_cuda(session: nox.Session) -> None:
    install_needs(session)
    run_bench(session, "cuda")


@nox.session(name="bench-npu", venv_backend="none")
def bench_npu(session: nox.Session) -> None:
    """On the host's own torch + torch_npu + CANN: installs neither torch nor torch_npu."""
    install_needs(session)
    run_bench(session, "npu")


@nox.session(name="build-ascendc", venv_backend="none")
def build_ascendc(session: nox.Session) -> None:
    """Build the Ascend C kernel (CMake, CANN, torch_npu); names what is missing anywhere else."""
    install_needs(session)
    python(session, "-m", "impls.ascendc", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The main job: parity gate, benchmark and report on the best device present (npu, cuda, cpu)."""
    install_needs(session)
    run_bench(session, python(session, "-c", BEST_DEVICE, silent=True).strip())


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Rebuild reports: `nox -s report -- reports/cpu-2026... [--compare OLD_DIR]` (default: every run folder)."""
    install_needs(session)
    runs = session.posargs or [str(p) for p in sorted(Path("reports").glob("*-*")) if (p / "results.csv").exists()]
    if not runs:
        session.error("no run folder with results.csv under reports/; run nox -s bench first")
    python(session, "-m", "reports", *runs)
