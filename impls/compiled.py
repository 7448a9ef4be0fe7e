"""The grid_sample fallback under torch.compile.

Inductor on cpu and cuda, torchair's backend on npu (only where installed).
One graph is compiled per shape, parameters and dtype, and reused: dynamo's
cache keeps them, with its recompile limit lifted for this function, which
would otherwise run eager after 8 shapes without saying so.

Donated buffers (torch >= 2.6) are switched off process-wide on first use:
they let a compiled backward free its saved tensors, so a second backward
through one forward (retain_graph=True, as the benchmark's backward mode and
some training loops do) raises. A scoped patch is not enough, because torch
reads the setting again when the backward runs, outside this function.
"""

from __future__ import annotations

import torch

from impls import devices
from impls.grid_sample import compute_dtype, dcnv3_grid_sample
from impls.registry import register

_RECOMPILE_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
_compiled: dict[str, object] = {}


def _fallback(input, offset, mask, params):
    return dcnv3_grid_sample(input, offset, mask, params, compute_dtype(input.dtype))


def _compiled_for(device: torch.device):
    if device.type not in _compiled:
        if hasattr(torch._functorch.config, "donated_buffer"):
            torch._functorch.config.donated_buffer = False
        _compiled[device.type] = torch.compile(_fallback, backend=devices.compile_backend(device), dynamic=False)
    return _compiled[device.type]


@register("compiled", requires=devices.compile_unavailable_reason, priority=5, compiles_per_shape=True)
def compiled(input, offset, mask, params):
    """The grid_sample fallback compiled by torch.compile (inductor; torchair on npu), one graph per shape."""
    with torch._dynamo.config.patch(**{_RECOMPILE_LIMIT: 1_000_000}):
        return _compiled_for(input.device)(input, offset, mask, params)
