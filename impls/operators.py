"""Autograd and fake (meta) kernels for DCNv3 operators defined as torch.library ops.

Every native kernel here (C++, Triton, Ascend C) defines a forward op taking
`(input, offset, mask, *scalars)` and a backward op returning the three
gradients; this gives each the same fake kernels and (Triton, Ascend C) the
same Python autograd, so torch.compile and torch.library.opcheck see one
ordinary operator each time. The C++ kernel registers its autograd in C++
(dcnv3_cpu.cpp): measured 55 us less per forward than this Python route.
"""

from __future__ import annotations

from typing import Callable

import torch


def register_fake_kernels(forward: str, backward: str) -> None:
    """Shapes only: the output is [N, Ho, Wo, C]; the gradients are shaped like their tensors."""

    @torch.library.register_fake(forward)
    def _(input, offset, mask, *scalars):
        return input.new_empty(*offset.shape[:3], input.shape[3])

    @torch.library.register_fake(backward)
    def _(grad_output, input, offset, mask, *scalars):
        return torch.empty_like(input), torch.empty_like(offset), torch.empty_like(mask)


def register_backward(forward: str, gradients: Callable) -> None:
    """Autograd for `forward`: `gradients(grad_output, input, offset, mask, scalars)` -> three gradients."""

    def setup_context(ctx, inputs, output):
        input, offset, mask, *scalars = inputs
        ctx.save_for_backward(input, offset, mask)
        ctx.scalars = scalars

    def backward(ctx, grad_output):
        input, offset, mask = ctx.saved_tensors
        grads = gradients(grad_output, input, offset, mask, ctx.scalars)
        return (*grads, *([None] * len(ctx.scalars)))

    torch.library.register_autograd(forward, backward, setup_context=setup_context)
