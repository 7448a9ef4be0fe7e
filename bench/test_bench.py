"""pytest-benchmark tests: implementation x shape x mode x dtype, device-synchronised (bench/timing.py).

Run through `python -m bench` (which gates on parity first and writes the tidy CSV), or directly:

    pytest bench --device cpu --bench-suite quick --benchmark-json out.json

Each test times one case with pytest-benchmark and puts its record (bench/records.py) in the
benchmark's extra_info, and in the records of `python -m bench`'s request when it is the one running.
`test_operator` times the operator's calls, `test_model` whole backbones (the `model-*` suites) the same way, with the DCNv3 core's share of
one profiled repetition and where the rest went (bench/profile.py).
"""

from __future__ import annotations

from dataclasses import asdict

from bench.timing import time_case


def _timed(benchmark, timing_request, case, device) -> None:
    impl, shape, mode, dtype = case
    record = time_case(benchmark, impl, shape, mode, dtype, device, timing_request.settings)
    benchmark.extra_info.update(asdict(record))
    timing_request.records.append(record)


def test_operator(benchmark, timing_request, available_bench_case, bench_device):
    """One operator call (DCNv3's or MSDA's, as the suite's shapes are)."""
    _timed(benchmark, timing_request, available_bench_case, bench_device)


def test_model(benchmark, timing_request, available_model_case, bench_device):
    """A whole backbone with impl's core; after the timing, one profiled repetition says where the time goes."""
    _timed(benchmark, timing_request, available_model_case, bench_device)
