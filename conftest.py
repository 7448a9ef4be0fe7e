"""Project-wide pytest options, fixtures and hypothesis profiles.

    pytest --device cuda --impl grid_sample       # one device, chosen implementations
    HYPOTHESIS_PROFILE=thorough pytest parity     # or --hypothesis-profile thorough

Profiles: `ci` (derandomized, bounded; the default under CI=true), `dev` (the
default otherwise) and `thorough` (long sweeps, for nox -s parity-thorough).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, settings

import impls
from impls import devices, external

settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=40, deadline=None, print_blob=True)
settings.register_profile(
    "thorough", max_examples=600, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device to test on: cpu (default), cuda, cuda:N, npu")
    parser.addoption(
        "--impl", action="append", default=None, metavar="NAME",
        help="implementation to test (repeatable; default: every registered one)",
    )
    external.add_option(parser.addoption, "test")
    group = parser.getgroup("dcnv3 benchmark", "bench/test_bench.py (see python -m bench)")
    group.addoption("--bench-suite", default="quick", help="shape suite from bench/shapes.py (default quick)")
    group.addoption("--bench-dtype", action="append", default=None, help="dtype to time (repeatable; default float32)")
    group.addoption("--bench-mode", action="append", default=None, help="forward, backward, forward+backward (repeatable; default all)")
    group.addoption("--bench-seconds", type=float, default=1.0, help="time budget per case, sets the rounds (default 1.0)")
    group.addoption("--bench-min-rounds", type=int, default=5, help="fewest timed rounds per case (default 5)")
    group.addoption("--bench-max-rounds", type=int, default=200, help="most timed rounds per case (default 200)")
    group.addoption("--bench-threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")


def pytest_configure(config):
    try:
        external.load(config.getoption("--impl-module"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def selected_implementations(config) -> list[str]:
    requested = config.getoption("--impl")
    known = impls.names()
    unknown = [name for name in requested or [] if name not in known]
    if unknown:
        raise pytest.UsageError(f"--impl {', '.join(unknown)}: unknown; known: {', '.join(known)}")
    return requested or known


def pytest_generate_tests(metafunc):
    """`impl_dtype`: every (implementation under test, dtype it declares) pair; the reference is the yardstick.
    `bench_case`: every (implementation, shape, mode, dtype) the benchmark options select."""
    for fixture in ("bench_case", "model_case"):
        if fixture in metafunc.fixturenames:
            parametrize_benchmarks(metafunc, fixture)
    if "impl_dtype" in metafunc.fixturenames:
        # Tests marked `compiling` take the implementations that compile per shape
        # (seconds each); the hypothesis property tests take all the others, those
        # marked `interpreted` the ones running in an interpreter here, `native` the rest.
        marked = {m: metafunc.definition.get_closest_marker(m) is not None for m in ("compiling", "interpreted", "native")}

        def wanted(impl) -> bool:
            if impl.compiles_per_shape != marked["compiling"]:
                return False
            if marked["interpreted"] or marked["native"]:
                return impl.interpreted() == marked["interpreted"]
            return True

        pairs = [
            (name, dtype)
            for name in selected_implementations(metafunc.config)
            if name != "reference" and wanted(impls.get(name))
            for dtype in sorted(impls.get(name).dtypes, key=str)
        ]
        metafunc.parametrize(
            "impl_dtype", pairs, ids=[f"{n}-{str(d).removeprefix('torch.')}" for n, d in pairs]
        )


def parametrize_benchmarks(metafunc, fixture: str):
    """`bench_case` takes an operator suite's shapes, `model_case` a model suite's backbones; each is
    empty (and skipped) for the other kind of suite."""
    from bench.cases import MODEL_MODES, MODES
    from bench.shapes import is_model_suite, suite
    from parity.thresholds import dtype_name

    config = metafunc.config
    suite_name = config.getoption("--bench-suite")
    models = is_model_suite(suite_name)
    dtypes = [getattr(torch, name) for name in config.getoption("--bench-dtype") or ["float32"]]
    modes = config.getoption("--bench-mode") or list(MODEL_MODES if models else MODES)
    try:
        shapes = suite(suite_name) if models == (fixture == "model_case") else []
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    cases = [
        (impls.get(name), shape, mode, dtype)
        for dtype in dtypes
        for shape in shapes
        for mode in modes
        for name in selected_implementations(config)
        if name != "reference" and impls.get(name).supports(dtype)
    ]
    ids = [f"{i.name}-{s.name}-{m}-{dtype_name(d)}" for i, s, m, d in cases]
    metafunc.parametrize(fixture, cases, ids=ids)


@pytest.fixture(scope="session")
def bench_settings(request):
    option = request.config.getoption
    if option("--bench-threads"):
        torch.set_num_threads(option("--bench-threads"))
    return SimpleNamespace(
        suite=option("--bench-suite"), seconds=option("--bench-seconds"),
        min_rounds=option("--bench-min-rounds"), max_rounds=option("--bench-max-rounds"),
    )


def _timeable(case, device):
    reason = case[0].untimed_reason(device)
    if reason is not None:
        pytest.skip(reason)
    return case


@pytest.fixture
def available_bench_case(bench_case, device):
    return _timeable(bench_case, device)


@pytest.fixture
def available_model_case(model_case, device):
    return _timeable(model_case, device)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    spec = request.config.getoption("--device")
    reason = devices.unavailable_reason(devices.type_of(spec))
    if reason is not None:
        pytest.skip(reason)
    return torch.device(spec)


@pytest.fixture
def impl(impl_dtype, device):
    implementation = impls.get(impl_dtype[0])
    reason = implementation.unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)
    return implementation


@pytest.fixture
def dtype(impl_dtype, device):
    reason = devices.dtype_unavailable_reason(device, impl_dtype[1])
    if reason is not None:
        pytest.skip(reason)
    return impl_dtype[1]
