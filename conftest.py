"""Project-wide pytest options, fixtures and hypothesis profiles.

    pytest --device cuda --impl grid_sample       # one device, chosen implementations
    HYPOTHESIS_PROFILE=thorough pytest parity     # or --hypothesis-profile thorough

Profiles: `ci` (derandomized, bounded; the default under CI=true), `dev` (the
default otherwise) and `thorough` (long sweeps, for nox -s parity-thorough).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from bench import instruments, timing
from bench.cases import outside_envelope
from bench.shapes import is_model_suite
from impls import devices, external
from impls.cli import dtype_name
from impls.registry import REGISTRIES

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
    parser.addoption("--devices", metavar="all|N|0,3,5",
                     help="one pytest-xdist worker per device of --device's type, each pinned to its device: all, "
                          "the first N, or these indices; on cpu, N workers (at most the cores)")
    parser.addoption(
        "--impl", action="append", default=None, metavar="NAME",
        help="implementation to test (repeatable; default: every registered one)",
    )
    external.add_option(parser.addoption, "test")
    group = parser.getgroup("dcnv3 benchmark", "bench/test_bench.py (python -m bench's options, prefixed bench-)")
    timing.add_options(group.addoption, "bench-", dict(action="append"))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """--devices as pytest-xdist's own workers: one `popen` each, started with the device's visible-devices
    variable set (impls/devices.py), so that each worker's device 0 is its own before the runtime starts."""
    spec = config.getoption("--devices")
    if spec is None or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses or config.option.tx:
        raise pytest.UsageError("--devices starts the pytest-xdist workers itself: not with -n or --tx")
    device_type = devices.type_of(config.getoption("--device"))
    try:
        workers = devices.worker_devices(device_type, spec)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    config.option.tx = devices.xdist_workers(device_type, workers)
    config.option.dist = "load"


def pytest_configure(config):
    try:
        external.load(config.getoption("--impl-module"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def selected_implementations(config, operator: str = "dcnv3") -> list[str]:
    """The --impl names the operator has (an --impl naming no implementation of any operator is an error),
    or all of the operator's."""
    requested = config.getoption("--impl")
    known = REGISTRIES[operator].names()
    anywhere = {name for registry in REGISTRIES.values() for name in registry.names()}
    unknown = [name for name in requested or [] if name not in anywhere]
    if unknown:
        raise pytest.UsageError(f"--impl {', '.join(unknown)}: unknown; known: {', '.join(sorted(anywhere))}")
    return [name for name in requested if name in known] if requested else known


def pytest_generate_tests(metafunc):
    """`impl_dtype`: every (implementation under test, dtype it declares) pair of the test's operator
    (`@pytest.mark.operator("msda")`; DCNv3 unmarked); the reference is the yardstick.
    `bench_case`: every (implementation, shape, mode, dtype) the benchmark options select."""
    for fixture in ("bench_case", "model_case"):
        if fixture in metafunc.fixturenames:
            parametrize_benchmarks(metafunc, fixture)
    if "impl_dtype" in metafunc.fixturenames:
        # Tests marked `compiling` take the implementations that compile per shape
        # (seconds each); the hypothesis property tests take all the others, those
        # marked `interpreted` the ones running in an interpreter here, `native` the rest.
        # Those marked `gradients` leave out implementations with no backward.
        marked = {m: metafunc.definition.get_closest_marker(m) is not None
                  for m in ("compiling", "interpreted", "native", "gradients")}

        def wanted(impl) -> bool:
            if impl.compiles_per_shape != marked["compiling"] or (marked["gradients"] and impl.forward_only):
                return False
            if marked["interpreted"] or marked["native"]:
                return impl.interpreted() == marked["interpreted"]
            return True

        operator = metafunc.definition.get_closest_marker("operator")
        registry = REGISTRIES[operator.args[0] if operator else "dcnv3"]
        pairs = [
            (registry.get(name), dtype)
            for name in selected_implementations(metafunc.config, registry.operator.name)
            if name != "reference" and wanted(registry.get(name))
            for dtype in sorted(registry.get(name).dtypes, key=str)
        ]
        metafunc.parametrize(
            "impl_dtype", pairs, ids=[f"{i.name}-{dtype_name(d)}" for i, d in pairs]
        )


def pytest_collection_modifyitems(items):
    """Tests marked `compiling` last: beside the gate (`nox -s ci` runs both at once) they then find the
    gate's graphs in inductor's cache instead of compiling each shape again."""
    items.sort(key=lambda item: item.get_closest_marker("compiling") is not None)


_TIMING_REQUEST = pytest.StashKey[timing.TimingRequest]()


def timing_request_of(config) -> timing.TimingRequest:
    """The TimingRequest `python -m bench` handed over as a plug-in, or one made from this run's options."""
    handed = [plugin for plugin in config.pluginmanager.get_plugins() if isinstance(plugin, timing.TimingRequest)]
    if handed:
        return handed[0]
    if _TIMING_REQUEST not in config.stash:
        try:
            settings = timing.settings_from(lambda name: config.getoption(f"--bench-{name.replace('_', '-')}"))
        except ValueError as error:
            raise pytest.UsageError(f"--bench-{error}") from None
        config.stash[_TIMING_REQUEST] = timing.TimingRequest(settings, config.getoption("--device"),
                                                              selected_implementations(config, settings.op))
    return config.stash[_TIMING_REQUEST]


def parametrize_benchmarks(metafunc, fixture: str):
    """`bench_case` takes an operator suite's shapes, `model_case` a model suite's backbones; each is
    empty (and skipped) for the other kind of suite. Implementations with no backward take the forward
    mode only."""
    request = timing_request_of(metafunc.config)
    settings = request.settings
    shapes = settings.cases if is_model_suite(settings.suite) == (fixture == "model_case") else []
    registry = REGISTRIES[settings.op]
    cases = [
        (registry.get(name), shape, mode, dtype)
        for dtype in settings.dtypes
        for shape in shapes
        for mode in settings.modes
        for name in request.implementations
        if name != "reference" and registry.get(name).supports(dtype)
        and (mode == "forward" or not registry.get(name).forward_only)
    ]
    clock = pytest.mark.benchmark(timer=instruments.synchronised_timer(request.device))
    metafunc.parametrize(fixture, [pytest.param(case, marks=clock) for case in cases],
                         ids=[f"{i.name}-{s.name}-{m}-{dtype_name(d)}" for i, s, m, d in cases])


@pytest.fixture(scope="session")
def timing_request(request) -> timing.TimingRequest:
    handed = timing_request_of(request.config)
    if handed.settings.threads:
        torch.set_num_threads(handed.settings.threads)
    return handed


@pytest.fixture(scope="session")
def bench_device(timing_request) -> torch.device:
    return _usable_device(timing_request.device)


def _timeable(case, device):
    impl, shape, _, dtype = case
    reason = impl.untimed_reason(device) or outside_envelope(impl, shape, dtype)
    if reason is not None:
        pytest.skip(reason)
    return case


@pytest.fixture
def available_bench_case(bench_case, bench_device):
    return _timeable(bench_case, bench_device)


@pytest.fixture
def available_model_case(model_case, bench_device):
    return _timeable(model_case, bench_device)


def _usable_device(spec: str) -> torch.device:
    reason = devices.unavailable_reason(devices.type_of(spec))
    if reason is not None:
        pytest.skip(reason)
    return torch.device(spec)


@pytest.fixture
def several_threads():
    """At least two torch threads while the test runs, for claims about how a kernel splits its work
    (nox -s ci gives each process one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    return _usable_device(request.config.getoption("--device"))


@pytest.fixture
def impl(impl_dtype, device):
    implementation = impl_dtype[0]
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
