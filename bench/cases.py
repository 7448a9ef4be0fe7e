"""One benchmark case: an implementation, a shape (or a whole model), a mode and a dtype, ready to run."""

from __future__ import annotations

from typing import Callable

import torch

from bench.shapes import ModelCase, Shape
from impls import Implementation, internimage

MODES = ("forward", "backward", "forward+backward")
# A whole model: inference and a training step (a backward alone is no workload of its own there).
MODEL_MODES = ("forward", "forward+backward")


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Inputs at model-like scales: unit features, offsets of about a pixel, softmax masks."""
    torch.manual_seed(seed)
    p = shape.params
    out_h, out_w = shape.output_size
    input = torch.randn(shape.batch, shape.height, shape.width, p.channels, device=device).to(dtype)
    offset = torch.randn(shape.batch, out_h, out_w, p.group * p.points * 2, device=device).to(dtype)
    logits = torch.randn(shape.batch, out_h, out_w, p.group, p.points, device=device)
    mask = torch.softmax(logits, -1).reshape(shape.batch, out_h, out_w, -1).to(dtype)
    grad_output = torch.randn(shape.batch, out_h, out_w, p.channels, device=device).to(dtype)
    return input, offset, mask, grad_output


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
    input, offset, mask, grad_output = make_inputs(shape, dtype, device)
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
