"""Where a whole model's time goes: the DCNv3 core's share and the rest by operator family, profiled.

One step runs under torch.profiler. Time inside the core's forward is what
runs inside impls.nn.CORE_RANGE; the core's backward is every autograd node
that an operator inside that range created (the profiler gives a backward node
the sequence number of the forward operator that made it), with everything it
runs. Every other operator's self time goes to its family by name. On CUDA the
times are the kernels' device time; elsewhere they are host time, which on an
NPU is launch time, not the device's.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from impls import devices
from impls.nn import CORE_RANGE

CORE = "DCNv3 core"
UNTRACKED = "Python and untracked"
BACKWARD_NODE = "autograd::engine::evaluate_function: "
# First match wins; names are aten's, with the backward variants caught by the same words.
FAMILIES = [
    ("convolution", r"conv"),
    ("linear", r"addmm|\bmm\b|linear|matmul|bmm"),
    ("layer_norm", r"layer_norm"),
    ("activation", r"gelu|silu|relu|sigmoid"),
    ("softmax", r"softmax"),
    ("copies and layout", r"copy|contiguous|clone|permute|transpose|reshape|view|expand|cat|stack|empty|as_strided"),
    ("elementwise and reductions", r"add|mul|sub|div|where|fill|zero|sum|mean|neg|pow|sqrt|rsqrt"),
]


def profiler_clock(device: torch.device) -> tuple[list, bool, str]:
    """(torch.profiler activities, whether operator times are the device's own, what the times are)."""
    if device.type == "cuda":
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA], True, "cuda device time"
    if device.type == "npu":
        # NPU kernels are seen by torch_npu.profiler only; torch.profiler times their launches.
        return [ProfilerActivity.CPU], False, "npu host (launch) time"
    return [ProfilerActivity.CPU], False, "cpu time"


def family(name: str) -> str:
    for label, pattern in FAMILIES:
        if re.search(pattern, name):
            return label
    return "other"


def _has_ancestor(event, test) -> bool:
    while event is not None:
        if test(event):
            return True
        event = event.cpu_parent
    return False


def core_roots(events) -> list:
    """The events whose whole subtree is the core's: its forward ranges, and the backward nodes that an
    operator inside one of them created (same sequence number)."""
    forward_sequence = {event.sequence_nr for event in events if event.sequence_nr >= 0
                        and _has_ancestor(event, lambda e: e.name == CORE_RANGE)}
    return [event for event in events if event.name == CORE_RANGE
            or (event.name.startswith(BACKWARD_NODE) and event.sequence_nr in forward_sequence)]


def profiled(run: Callable[[], None], device: torch.device) -> tuple[list, float]:
    """(the host-side events of one call of run under torch.profiler, its wall time in ms)."""
    activities, _, _ = profiler_clock(device)
    started = time.perf_counter()
    with profile(activities=activities) as profiler:
        run()
        devices.synchronize(device)
    wall_ms = (time.perf_counter() - started) * 1e3
    return [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CPU], wall_ms


def breakdown(run: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Milliseconds per family for one call of run, the core first, then what no operator accounts for."""
    _, device_times, _ = profiler_clock(device)
    events, wall_ms = profiled(run, device)
    roots = {id(event) for event in core_roots(events)}

    def own_ms(event) -> float:
        micros = event.self_device_time_total if device_times else event.self_cpu_time_total
        return micros / 1e3

    totals = {CORE: 0.0}
    for event in events:
        label = CORE if _has_ancestor(event, lambda e: id(e) in roots) else family(event.name.removeprefix(BACKWARD_NODE))
        totals[label] = totals.get(label, 0.0) + own_ms(event)
    if not device_times:  # device times do not add up to the host's wall time
        totals[UNTRACKED] = max(wall_ms - sum(totals.values()), 0.0)
    return totals
