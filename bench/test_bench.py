"""pytest-benchmark tests: implementation x shape x mode x dtype, device-synchronised.

Run through `python -m bench` (which gates on parity first and writes the
tidy CSV), or directly:

    pytest bench --device cpu --bench-suite quick --benchmark-json out.json

Each repetition is timed by impls.devices.Clock (CUDA / NPU events, CPU wall
clock) after a cache flush; pytest-benchmark records the same repetitions with
its own synchronised wall clock. p20/p50/p80 of the device clock, the first
call's time (compilation included), the thread count, bytes moved, GB/s and
peak memory (median of three runs) go into each record's extra_info.
`test_model` times whole backbones (the `model-*` suites) the same way and adds
the DCNv3 core's share of one profiled repetition and where the rest went
(bench/profile.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bench import profile, traffic
from bench.cases import model_runner, runner
from impls import devices
from parity.thresholds import dtype_name

WARMUP_ROUNDS = 3
# CPU peak-RSS growth varies by about a third run to run on MB-sized problems.
MEMORY_RUNS = 3


def _timed(benchmark, make_run, group: str, device, bench_settings) -> tuple[Callable[[], None], dict]:
    """Build the case with make_run(), time it, and return (its run, the timing fields of the record)."""
    clock = devices.Clock(device)
    flush = devices.cache_flusher(device)
    devices.settle_heap(device)

    # The first call includes one-off work: torch.compile's compilation, say.
    clock.start()
    run = make_run()
    run()
    first_call_ms = clock.stop()
    for _ in range(WARMUP_ROUNDS):
        run()
    clock.start()
    run()
    one_ms = max(clock.stop(), 1e-3)
    rounds = int(np.clip(bench_settings.seconds * 1e3 / one_ms, bench_settings.min_rounds, bench_settings.max_rounds))

    samples: list[float] = []

    def timed():
        clock.start()
        run()
        samples.append(clock.stop())

    benchmark.group = group
    benchmark.pedantic(timed, setup=flush, rounds=rounds, iterations=1, warmup_rounds=0)

    peaks = []
    for _ in range(MEMORY_RUNS):
        with devices.PeakMemory(device) as peak:
            run()
        peaks.append(peak.bytes)
    assert len(samples) == rounds and all(s > 0 for s in samples)
    p20, p50, p80 = np.percentile(samples, [20, 50, 80])
    return run, dict(
        device=device.type, suite=bench_settings.suite, threads=torch.get_num_threads(), rounds=len(samples),
        first_call_ms=first_call_ms, p20_ms=float(p20), p50_ms=float(p50), p80_ms=float(p80),
        peak_memory_bytes=int(np.median(peaks)),
    )


def test_dcnv3(benchmark, available_bench_case, device, bench_settings):
    impl, shape, mode, dtype = available_bench_case
    _, timing = _timed(benchmark, lambda: runner(impl, shape, mode, dtype, device),
                       f"{shape.name} {dtype_name(dtype)} {mode}", device, bench_settings)
    moved = traffic.bytes_moved(shape, mode, dtype)
    benchmark.extra_info.update(
        implementation=impl.name, baseline=impl.baseline, dtype=dtype_name(dtype), mode=mode, **shape.fields(),
        **timing, bytes_moved=moved, gbps=moved / (timing["p50_ms"] / 1e3) / 1e9,
    )


def test_model(benchmark, available_model_case, device, bench_settings):
    """A whole backbone with impl's core; after the timing, one profiled repetition says where the time goes."""
    impl, case, mode, dtype = available_model_case
    run, timing = _timed(benchmark, lambda: model_runner(impl, case, mode, dtype, device),
                         f"{case.name} {dtype_name(dtype)} {mode}", device, bench_settings)
    spent = profile.breakdown(run, device)
    benchmark.extra_info.update(
        implementation=impl.name, baseline=impl.baseline, dtype=dtype_name(dtype), mode=mode, **case.fields(),
        **timing, core_share=spent[profile.CORE] / sum(spent.values()),
        profile_clock=devices.profiler_clock(device)[2], profile_ms=spent,
    )
