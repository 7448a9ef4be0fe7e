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


def runner(impl: Implementation, shape: Shape, mode: str, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """A callable doing one repetition of `mode`; the backward mode's forward is done here, once."""
    input, offset, mask, grad_output = make_inputs(shape, dtype, device)
    params = shape.params
    if mode == "forward":

        def forward():
            with torch.no_grad():
                impl(input, offset, mask, params)

        return forward
    leaves = [t.requires_grad_() for t in (input, offset, mask)]
    if mode == "backward":
        output = impl(*leaves, params)

        def backward():
            torch.autograd.grad(output, leaves, grad_output, retain_graph=True)

        return backward
    if mode == "forward+backward":

        def forward_backward():
            torch.autograd.grad(impl(*leaves, params), leaves, grad_output)

        return forward_backward
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def model_runner(impl: Implementation, case: ModelCase, mode: str, dtype: torch.dtype,
                 device: torch.device) -> Callable[[], None]:
    """One repetition of `mode` for the whole backbone with impl's core: a forward, or a training step's
    forward and backward (gradients of every parameter); the backward mode's forward is done here, once."""
    model = internimage.build(case.config, impl=impl.name, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(case.batch, 3, case.size, case.size, generator=generator).to(device, dtype)
    if mode == "forward":

        def forward():
            with torch.no_grad():
                model(image)

        return forward
    parameters = list(model.parameters())
    with torch.no_grad():
        cotangents = [torch.randn(o.shape, generator=generator).to(device, dtype) for o in model(image)]
    if mode == "backward":
        outputs = model(image)

        def backward():
            torch.autograd.grad(outputs, parameters, cotangents, retain_graph=True)

        return backward
    if mode == "forward+backward":

        def forward_backward():
            torch.autograd.grad(model(image), parameters, cotangents)

        return forward_backward
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
