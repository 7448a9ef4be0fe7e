"""Fake kernels and autograd for MSDA's native operators (C++, Triton), defined as torch.library ops:
a forward `(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> output`
and a backward `(grad_output, *those) -> (grad_value, grad_sampling_locations, grad_attention_weights)`,
so that autograd, torch.compile and torch.library.opcheck see one ordinary operator each time."""

from __future__ import annotations

import torch


def register_fake_and_autograd(forward: str, backward: str) -> None:
    """For the operators named `namespace::name`."""
    namespace, name = backward.split("::")
    backward_op = getattr(getattr(torch.ops, namespace), name)

    @torch.library.register_fake(forward)
    def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        batch, queries, heads = sampling_locations.shape[:3]
        return value.new_empty(batch, queries, heads * value.shape[3])

    @torch.library.register_fake(backward)
    def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def differentiate(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = backward_op(grad_output, value, shapes, starts, locations, weights)
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd(forward, differentiate, setup_context=setup_context)
