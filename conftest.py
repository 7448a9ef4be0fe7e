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

import impls
from impls import devices

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


def selected_implementations(config) -> list[str]:
    requested = config.getoption("--impl")
    known = impls.names()
    unknown = [name for name in requested or [] if name not in known]
    if unknown:
        raise pytest.UsageError(f"--impl {', '.join(unknown)}: unknown; known: {', '.join(known)}")
    return requested or known


def pytest_generate_tests(metafunc):
    """`impl_dtype`: every (implementation under test, dtype it declares) pair; the reference is the yardstick."""
    if "impl_dtype" in metafunc.fixturenames:
        pairs = [
            (name, dtype)
            for name in selected_implementations(metafunc.config)
            if name != "reference"
            for dtype in sorted(impls.get(name).dtypes, key=str)
        ]
        metafunc.parametrize(
            "impl_dtype", pairs, ids=[f"{n}-{str(d).removeprefix('torch.')}" for n, d in pairs]
        )


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
def dtype(impl_dtype):
    return impl_dtype[1]
