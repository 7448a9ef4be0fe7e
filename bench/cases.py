"""One benchmark case: an implementation, a shape (or a whole model), a mode and a dtype, ready to run."""

from __future__ import annotations

from typing import Callable

import torch

from bench.records import MODES
from bench.shapes import ModelCase, Shape
from impls import Implementation, internimage


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """Inputs at model-like scales: unit features, offsets of about a pixel, softmax masks. Drawn on the
    CPU from `generator`, so that every device and implementation times the same numbers."""
    p = shape.params
    out_h, out_w = shape.output_size

    def draw(*size):
        return torch.randn(*size, generator=generator)

    input = draw(shape.batch, shape.height, shape.width, p.channels)
    offset = draw(shape.batch, out_h, out_w, p.group * p.points * 2)
    mask = torch.softmax(draw(shape.batch, out_h, out_w, p.group, p.points), -1).reshape(shape.batch, out_h, out_w, -1)
    grad_output = draw(shape.batch, out_h, out_w, p.channels)
    return tuple(t.to(device, dtype) for t in (input, offset, mask, grad_output))


def repetition(mode: str, forward: Callable[[], object], differentiated: list[torch.Tensor],
               cotangents) -> Callable[[], None]:
    """One repetition of `mode` of `forward()`: under no_grad, the gradients of `differentiated`, or both;
    the backward mode's forward is done here, once."""
    if mode == "forward":

        def forward_only():
            with torch.no_grad():
                forward()

        return forward_only
    if mode == "backward":
        output = forward()

        def backward():
            torch.autograd.grad(output, differentiated, cotangents, retain_graph=True)

        return backward
    if mode == "forward+backward":

        def forward_backward():
            torch.autograd.grad(forward(), differentiated, cotangents)

        return forward_backward
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def runner(impl: Implementation, shape: Shape, mode: str, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """A callable doing one repetition of `mode` of the operator, differentiated in its three tensors."""
    input, offset, mask, grad_output = make_inputs(shape, dtype, device, torch.Generator().manual_seed(0))
    leaves = [input, offset, mask] if mode == "forward" else [t.requires_grad_() for t in (input, offset, mask)]
    return repetition(mode, lambda: impl(*leaves, shape.params), leaves, grad_output)


def model_runner(impl: Implementation, case: ModelCase, mode: str, dtype: torch.dtype,
                 device: torch.device) -> Callable[[], None]:
    """One repetition of `mode` for the whole backbone with impl's core: a forward, or a training step's
    forward and backward (gradients of every parameter)."""
    model = internimage.build(case.config, impl=impl.name, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(case.batch, 3, case.size, case.size, generator=generator).to(device, dtype)
    cotangents = []
    if mode != "forward":  # shaped like the four stage outputs
        with torch.no_grad():
            cotangents = [torch.randn(o.shape, generator=generator).to(device, dtype) for o in model(image)]
    return repetition(mode, lambda: model(image), list(model.parameters()), cotangents)
