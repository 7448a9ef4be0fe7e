"""An MSDA parity problem: level sizes, heads, channels, queries, points and a recipe for its tensors.

Small hashable data, as DCNv3's parity/problems.py: what hypothesis draws and a CSV row records;
`tensors()` builds the same inputs from it on any device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from impls.msda.contract import level_starts
from parity.problems import SMOOTH_MARGIN, away_from_integers

LOCATION_KINDS = ("inside", "border", "outside")


@dataclass(frozen=True)
class MSDAProblem:
    OPERATOR: ClassVar[str] = "msda"

    batch: int
    levels: tuple[tuple[int, int], ...]  # (H_l, W_l)
    queries: int
    heads: int
    channels: int  # D, per head
    points: int
    location_kind: str = "inside"
    # Attention weights as the module makes them (softmax over L*P), or any reals: the op must not normalise.
    softmax: bool = True
    smooth: bool = False
    seed: int = 0
    regression: bool = False

    @property
    def length(self) -> int:
        return sum(h * w for h, w in self.levels)

    def describe(self) -> dict:
        """Flat fields for a CSV row."""
        return {"N": self.batch, "levels": "+".join(f"{h}x{w}" for h, w in self.levels), "Lq": self.queries,
                "M": self.heads, "D": self.channels, "P": self.points, "location_kind": self.location_kind,
                "softmax": self.softmax, "smooth": self.smooth, "seed": self.seed, "regression": self.regression}

    def label(self) -> str:
        levels = "+".join(f"{h}x{w}" for h, w in self.levels)
        return (f"N{self.batch} L{len(self.levels)}[{levels}] Lq{self.queries} M{self.heads}xD{self.channels} "
                f"P{self.points} {self.location_kind}{'' if self.softmax else ' raw-weights'}"
                f"{' smooth' if self.smooth else ''}")

    def index_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial_shapes, level_start_index), int64 on device."""
        return (torch.tensor(self.levels, dtype=torch.int64, device=device).reshape(len(self.levels), 2),
                torch.tensor(level_starts(list(self.levels)), dtype=torch.int64, device=device))

    def tensors(self, dtype: torch.dtype = torch.float64, device="cpu"):
        """(value, sampling_locations, attention_weights, grad_output), generated in float64, rounded to dtype."""
        gen = torch.Generator().manual_seed(self.seed)
        n, q, m, l, p = self.batch, self.queries, self.heads, len(self.levels), self.points
        value = torch.randn(n, self.length, m, self.channels, generator=gen, dtype=torch.float64)
        locations = self._locations(gen)
        if self.softmax:
            logits = 2 * torch.randn(n, q, m, l * p, generator=gen, dtype=torch.float64)
            weights = torch.softmax(logits, -1).reshape(n, q, m, l, p)
        else:
            weights = torch.randn(n, q, m, l, p, generator=gen, dtype=torch.float64)
        grad_output = torch.randn(n, q, m * self.channels, generator=gen, dtype=torch.float64)
        return tuple(t.to(device=device, dtype=dtype) for t in (value, locations, weights, grad_output))

    def call(self, impl, leaves):
        value, locations, weights = leaves
        return impl(value, *self.index_tensors(value.device), locations, weights)

    def _sizes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_l, W_l) broadcastable to [N, Lq, M, L, P]."""
        heights, widths = (torch.tensor(side, dtype=torch.float64).view(-1, 1) for side in zip(*self.levels))
        return heights, widths

    def comparable(self, leaves) -> torch.Tensor:
        """True where d/d location is comparable: the pixel coordinate it moves, from these (dtype-rounded)
        locations, is at least SMOOTH_MARGIN/2 from an integer (one-sided there, as DCNv3's offsets)."""
        locations = leaves[1].detach().cpu().to(torch.float64)
        heights, widths = self._sizes()
        w = locations[..., 0] * widths - 0.5
        h = locations[..., 1] * heights - 0.5

        def off_integers(position):
            return (position - position.round()).abs() >= SMOOTH_MARGIN / 2

        return torch.stack((off_integers(w), off_integers(h)), -1)

    def _locations(self, gen: torch.Generator) -> torch.Tensor:
        shape = (self.batch, self.queries, self.heads, len(self.levels), self.points)
        heights, widths = self._sizes()

        def uniform(low, high):
            return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)

        if self.location_kind == "inside":
            w, h = uniform(0, 1) * widths - 0.5, uniform(0, 1) * heights - 0.5
        elif self.location_kind == "border":
            # Pixel positions around and exactly on the lines -1, 0, H-1, H (and W's) of each level.
            w = _near_border(uniform(0, 1) * (widths + 2) - 1.5, widths, gen)
            h = _near_border(uniform(0, 1) * (heights + 2) - 1.5, heights, gen)
        elif self.location_kind == "outside":
            w, h = uniform(-0.5, 1.5) * widths - 0.5, uniform(-0.5, 1.5) * heights - 0.5
        else:
            raise ValueError(f"location_kind must be one of {LOCATION_KINDS}, got {self.location_kind!r}")
        if self.smooth:
            w, h = away_from_integers(w), away_from_integers(h)
        return torch.stack(((w + 0.5) / widths, (h + 0.5) / heights), -1)


def _near_border(position: torch.Tensor, size: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    size = size.expand(position.shape)
    lines = torch.stack((torch.full_like(size, -1.0), torch.zeros_like(size), size - 1, size), -1)
    pick = torch.randint(0, 4, position.shape + (1,), generator=gen)
    on_line = torch.rand(position.shape, generator=gen, dtype=torch.float64) < 0.3
    return torch.where(on_line, lines.gather(-1, pick).squeeze(-1), position)


def loop_count(problem: MSDAProblem) -> int:
    """Innermost iterations of the reference: what bounds an example's run time."""
    return problem.batch * problem.queries * problem.heads * len(problem.levels) * problem.points
