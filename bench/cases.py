"""One benchmark case: an implementation, a shape (or a whole model), a mode and a dtype, ready to run."""

from __future__ import annotations

from typing import Callable

import torch

from bench.records import MODES
from bench.shapes import ModelCase, MSDAShape, Shape
from impls import Implementation, internimage
from impls.msda.contract import level_starts


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


def reference_points(shape: MSDAShape, generator: torch.Generator) -> torch.Tensor:
    """Each query's normalised (x, y) reference point, [Lq, 2]: an encoder's queries are the positions of
    every level (Lq = S), each at its pixel's centre; a decoder's are spread over the image."""
    if shape.queries != shape.length:
        return torch.rand(shape.queries, 2, generator=generator)
    centres = []
    for height, width in shape.levels:
        y, x = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                              indexing="ij")
        centres.append(torch.stack((x, y), -1).reshape(-1, 2))
    return torch.cat(centres)


def make_msda_inputs(shape: MSDAShape, dtype: torch.dtype, device: torch.device, generator: torch.Generator):
    """(value, sampling_locations, attention_weights, grad_output) as a trained model makes them: unit values;
    each query's points scattered by a couple of pixels of each level around its reference point (Deformable
    DETR's sampling offsets start as a ring of 1..P pixels around it), so that neighbouring queries read
    neighbouring pixels; weights a softmax over L*P. Drawn on the CPU from `generator`."""
    n, q, m, l, p = shape.batch, shape.queries, shape.heads, len(shape.levels), shape.points
    value = torch.randn(n, shape.length, m, shape.channels, generator=generator)
    sides = torch.tensor([(w, h) for h, w in shape.levels], dtype=torch.float32).view(1, 1, 1, l, 1, 2)
    pixels = 2 * torch.randn(n, q, m, l, p, 2, generator=generator)
    locations = reference_points(shape, generator).view(1, q, 1, 1, 1, 2) + pixels / sides
    weights = torch.softmax(torch.randn(n, q, m, l * p, generator=generator), -1).reshape(n, q, m, l, p)
    grad_output = torch.randn(n, q, m * shape.channels, generator=generator)
    return tuple(t.to(device, dtype) for t in (value, locations, weights, grad_output))


def outside_envelope(impl: Implementation, shape: Shape | MSDAShape, dtype: torch.dtype) -> str | None:
    """Why shape lies outside impl's documented limits (impls/registry.py, envelope), or None: asked of
    meta tensors of the call's shapes, so nothing is allocated."""
    if impl.envelope is None:
        return None
    if not isinstance(shape, MSDAShape):
        raise ValueError(f"{impl.name} declares an envelope, which DCNv3 shapes cannot be asked about")
    n, q, m, l, p = shape.batch, shape.queries, shape.heads, len(shape.levels), shape.points
    index = torch.empty(l, 2, dtype=torch.int64, device="meta"), torch.empty(l, dtype=torch.int64, device="meta")
    value, locations, weights = (torch.empty(size, dtype=dtype, device="meta")
                                 for size in ((n, shape.length, m, shape.channels), (n, q, m, l, p, 2), (n, q, m, l, p)))
    return impl.outside_envelope(value, *index, locations, weights)


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


def runner(impl: Implementation, shape: Shape | MSDAShape, mode: str, dtype: torch.dtype,
           device: torch.device) -> Callable[[], None]:
    """A callable doing one repetition of `mode` of the operator, differentiated in its three tensors."""
    generator = torch.Generator().manual_seed(0)
    msda = isinstance(shape, MSDAShape)
    *operands, grad_output = (make_msda_inputs if msda else make_inputs)(shape, dtype, device, generator)
    leaves = operands if mode == "forward" else [t.requires_grad_() for t in operands]
    if msda:
        shapes = torch.tensor(shape.levels, dtype=torch.int64, device=device)
        starts = torch.tensor(level_starts(list(shape.levels)), dtype=torch.int64, device=device)
        value, locations, weights = leaves
        return repetition(mode, lambda: impl(value, shapes, starts, locations, weights), leaves, grad_output)
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
