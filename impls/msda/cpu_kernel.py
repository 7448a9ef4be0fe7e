"""MSDA's native CPU kernel: C++ forward and backward (impls/msda/cpu_kernel.cpp) as torch.library operators
`msda_harness::msda_forward` and `msda_backward`, with fake kernels and autograd from
impls/msda/operators.py.

Built just in time on first use with DCNv3's kernel's flags and cache (impls/cpu_kernel); a failed build
makes this implementation unavailable with the compiler's message as the reason.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from impls.cpu_kernel import load_extension
from impls.msda.operators import register_fake_and_autograd
from impls.msda.registry import register

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
NAME = "msda_harness_cpu"


@functools.lru_cache(maxsize=None)
def build_error() -> str | None:
    """Build (or reuse) and load the operators once per process; the reason it failed, or None."""
    _, error = load_extension(NAME, SOURCE, python_module=False)
    if error is None:
        register_fake_and_autograd("msda_harness::msda_forward", "msda_harness::msda_backward")
    return error


def _requires(device: torch.device) -> str | None:
    return build_error()


@register("cpu_kernel", device_types=("cpu",), requires=_requires, priority=20)
def cpu_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Native C++ kernel: a (batch, query) per task forward, a (batch, head) per task race-free backward."""
    return torch.ops.msda_harness.msda_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                               attention_weights)
