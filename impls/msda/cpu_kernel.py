"""MSDA's native CPU kernel: C++ forward and backward (impls/msda/cpu_kernel.cpp) as torch.library operators
`msda_harness::msda_forward` and `msda_backward`, with fake kernels and autograd registered here, so that
autograd, torch.compile and torch.library.opcheck see one ordinary operator.

Built just in time on first use with DCNv3's kernel's flags and cache (impls/cpu_kernel); a failed build
makes this implementation unavailable with the compiler's message as the reason.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from impls.cpu_kernel import load_extension
from impls.msda.registry import register

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
NAME = "msda_harness_cpu"


@functools.lru_cache(maxsize=None)
def build_error() -> str | None:
    """Build (or reuse) and load the operators once per process; the reason it failed, or None."""
    _, error = load_extension(NAME, SOURCE, python_module=False)
    if error is None:
        _register()
    return error


def _register() -> None:
    @torch.library.register_fake("msda_harness::msda_forward")
    def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        batch, queries, heads = sampling_locations.shape[:3]
        return value.new_empty(batch, queries, heads * value.shape[3])

    @torch.library.register_fake("msda_harness::msda_backward")
    def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.msda_harness.msda_backward(
            grad_output, value, shapes, starts, locations, weights)
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd("msda_harness::msda_forward", backward, setup_context=setup_context)


def _requires(device: torch.device) -> str | None:
    return build_error()


@register("cpu_kernel", device_types=("cpu",), requires=_requires, priority=20)
def cpu_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Native C++ kernel: a (batch, query) per task forward, a (batch, head) per task race-free backward."""
    return torch.ops.msda_harness.msda_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                               attention_weights)
