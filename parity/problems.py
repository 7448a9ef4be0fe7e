"""A parity problem: shape, parameters and a recipe for its tensors.

A Problem is small, hashable data (what hypothesis draws and what a CSV row
records); `tensors()` builds the same inputs from it on any device and dtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from impls import DCNv3Params

OFFSET_KINDS = ("zero", "inside", "border", "far")
# Offset-gradient problems keep every sampling coordinate at least this far from
# an integer: the bilinear derivative jumps there (../shared/DCNv3.md, Gradients),
# and float32 position rounding (~1e-5 at these sizes) must not cross a jump.
SMOOTH_MARGIN = 0.02


@dataclass(frozen=True)
class Problem:
    OPERATOR: ClassVar[str] = "dcnv3"

    batch: int
    height: int
    width: int
    params: DCNv3Params
    offset_kind: str = "inside"
    smooth: bool = False
    seed: int = 0
    # One of parity/regressions.py's: implementations too slow for the whole sweep run these and a few drawn.
    regression: bool = False

    @property
    def output_size(self) -> tuple[int, int]:
        return self.params.output_size(self.height, self.width)

    def describe(self) -> dict:
        """Flat fields for a CSV row."""
        row = {"N": self.batch, "H": self.height, "W": self.width}
        row.update(asdict(self.params))
        row.update(offset_kind=self.offset_kind, smooth=self.smooth, seed=self.seed, regression=self.regression)
        return row

    def label(self) -> str:
        p = self.params
        return (
            f"N{self.batch} {self.height}x{self.width} G{p.group}xD{p.group_channels} "
            f"k{p.kernel_h}x{p.kernel_w} s{p.stride_h}x{p.stride_w} p{p.pad_h}x{p.pad_w} "
            f"d{p.dilation_h}x{p.dilation_w} scale{p.offset_scale:g}"
            f"{' rc' if p.remove_center else ''} {self.offset_kind}{' smooth' if self.smooth else ''}"
        )

    def tensors(self, dtype: torch.dtype = torch.float64, device="cpu"):
        """(input, offset, mask, grad_output), generated in float64 and rounded to dtype."""
        gen = torch.Generator().manual_seed(self.seed)
        p = self.params
        out_h, out_w = self.output_size
        input = torch.randn(self.batch, self.height, self.width, p.channels, generator=gen, dtype=torch.float64)
        logits = 2 * torch.randn(self.batch, out_h, out_w, p.group, p.points, generator=gen, dtype=torch.float64)
        # InternImage feeds the op a softmax over each group's points.
        mask = torch.softmax(logits, -1).reshape(self.batch, out_h, out_w, p.group * p.points)
        offset = self._offset(gen)
        grad_output = torch.randn(self.batch, out_h, out_w, p.channels, generator=gen, dtype=torch.float64)
        return tuple(t.to(device=device, dtype=dtype) for t in (input, offset, mask, grad_output))

    def call(self, impl, leaves):
        return impl(*leaves, self.params)

    def comparable(self, leaves) -> torch.Tensor:
        return self.offset_gradient_mask(leaves[1])

    def base_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling (y, x) of every point with zero offset, broadcastable to [N, Ho, Wo, G, P]."""
        base_y, base_x = self.params.base_positions(*self.output_size)
        return base_y[None, :, :, None, :], base_x[None, :, :, None, :]

    def offset_gradient_mask(self, offset: torch.Tensor) -> torch.Tensor:
        """True where d/d offset is comparable: the coordinate it moves, computed from
        these (dtype-rounded) offsets, is at least SMOOTH_MARGIN/2 from an integer.

        Rounding to float16/bfloat16 can put a nudged point back on an integer,
        where the derivative is one-sided; such entries are left out.
        """
        p = self.params
        out_h, out_w = self.output_size
        pairs = offset.detach().cpu().to(torch.float64).reshape(self.batch, out_h, out_w, p.group, p.points, 2)
        base_y, base_x = self.base_positions()
        x = base_x + pairs[..., 0] * p.offset_scale
        y = base_y + pairs[..., 1] * p.offset_scale

        def off_integers(position):
            return (position - position.round()).abs() >= SMOOTH_MARGIN / 2

        return torch.stack((off_integers(x), off_integers(y)), -1).reshape(offset.shape)

    def _offset(self, gen: torch.Generator) -> torch.Tensor:
        p = self.params
        out_h, out_w = self.output_size
        shape = (self.batch, out_h, out_w, p.group, p.points)
        base_y, base_x = self.base_positions()

        def uniform(low, high):
            return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)

        if self.offset_kind == "zero":
            y, x = base_y.expand(shape), base_x.expand(shape)
        elif self.offset_kind == "inside":
            y, x = base_y + uniform(-1.5, 1.5), base_x + uniform(-1.5, 1.5)
        elif self.offset_kind == "border":
            # Positions around and exactly on the lines -1, 0, H-1, H (and W's).
            y = _near_border(uniform(-1.5, self.height + 0.5), self.height, gen)
            x = _near_border(uniform(-1.5, self.width + 0.5), self.width, gen)
        elif self.offset_kind == "far":
            reach = 4 * max(self.height, self.width)
            y, x = base_y + uniform(-reach, reach), base_x + uniform(-reach, reach)
        else:
            raise ValueError(f"offset_kind must be one of {OFFSET_KINDS}, got {self.offset_kind!r}")
        if self.smooth:
            y, x = away_from_integers(y), away_from_integers(x)
        dx = (x - base_x) / p.offset_scale
        dy = (y - base_y) / p.offset_scale
        return torch.stack((dx, dy), -1).reshape(self.batch, out_h, out_w, p.group * p.points * 2)


def _near_border(position: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    lines = torch.tensor([-1.0, 0.0, size - 1.0, float(size)], dtype=torch.float64)
    pick = torch.randint(0, len(lines), position.shape, generator=gen)
    on_line = torch.rand(position.shape, generator=gen, dtype=torch.float64) < 0.3
    return torch.where(on_line, lines[pick], position)


def away_from_integers(position: torch.Tensor) -> torch.Tensor:
    whole = torch.floor(position)
    return whole + (position - whole).clamp(SMOOTH_MARGIN, 1 - SMOOTH_MARGIN)


def loop_count(problem: Problem) -> int:
    """Innermost iterations of the reference: what bounds an example's run time."""
    out_h, out_w = problem.output_size
    return problem.batch * out_h * out_w * problem.params.group * max(problem.params.points, 1)


def minimum_extent(kernel: int, dilation: int, pad: int) -> int:
    return max(1, dilation * (kernel - 1) + 1 - 2 * pad)
