"""DCNv3's parameters and the contract's bad-input rules (../shared/DCNv3.md).

Every check lives here so that all implementations reject the same inputs with
the same message, before any of them does work.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from typing import Iterable

import torch

from impls.cli import dtype_name


@dataclass(frozen=True)
class DCNv3Params:
    """InternImage's DCNv3 parameters, in InternImage's names and order."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    group_channels: int
    offset_scale: float = 1.0
    remove_center: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            if field.name in ("offset_scale", "remove_center"):
                continue
            value = getattr(self, field.name)
            if isinstance(value, bool):
                raise ValueError(f"{field.name} must be an integer, got {value!r}")
            try:
                value = operator.index(value)
            except TypeError:
                raise ValueError(f"{field.name} must be an integer, got {value!r}") from None
            object.__setattr__(self, field.name, value)
            floor = 0 if field.name.startswith("pad") else 1
            if value < floor:
                kind = "non-negative" if floor == 0 else "positive"
                raise ValueError(f"{field.name} must be {kind}, got {value}")
        try:
            scale = float(self.offset_scale)
        except (TypeError, ValueError):
            raise ValueError(f"offset_scale must be a number, got {self.offset_scale!r}") from None
        if not math.isfinite(scale):
            # Accepted, it would turn every sampling position, and so the whole output, into NaN.
            raise ValueError(f"offset_scale must be finite, got {scale}")
        object.__setattr__(self, "offset_scale", scale)
        object.__setattr__(self, "remove_center", bool(self.remove_center))
        if self.remove_center and self.kernel_h * self.kernel_w == 1:
            raise ValueError("remove_center with a 1x1 kernel leaves no sampling point (P = 0): "
                             f"kernel_h={self.kernel_h}, kernel_w={self.kernel_w}")
        if self.remove_center and (
            self.kernel_h != self.kernel_w or self.kernel_h % 2 == 0
        ):
            raise ValueError(
                "remove_center needs a square odd kernel, got "
                f"kernel_h={self.kernel_h}, kernel_w={self.kernel_w}"
            )
        # Built once: every native kernel call passes them (1.4 us to rebuild per call).
        object.__setattr__(self, "_scalars", tuple(getattr(self, field.name) for field in fields(self)))
        object.__setattr__(self, "_layouts", {})

    def scalars(self) -> tuple:
        """The twelve values in InternImage's order, as custom operators take them."""
        return self._scalars

    @property
    def points(self) -> int:
        """P: sampling points per group and output pixel."""
        return self.kernel_h * self.kernel_w - int(self.remove_center)

    @property
    def channels(self) -> int:
        return self.group * self.group_channels

    def kernel_points(self) -> list[tuple[int, int]]:
        """(i, j) per point index p: x-major (i over kernel_w outer), centre skipped."""
        centre = (self.kernel_w // 2, self.kernel_h // 2)
        return [
            (i, j)
            for i in range(self.kernel_w)
            for j in range(self.kernel_h)
            if not (self.remove_center and (i, j) == centre)
        ]

    @property
    def window_centre(self) -> tuple[int, int]:
        """(ch, cw): the window's centre from its first tap, in input pixels, (dilation * (kernel - 1)) // 2
        with the contract's integer division (an even kernel's centre is its tap left of the middle)."""
        return (self.dilation_h * (self.kernel_h - 1)) // 2, (self.dilation_w * (self.kernel_w - 1)) // 2

    def point_displacements(self) -> list[tuple[int, int]]:
        """(dy, dx) of each point p from the window centre before offset_scale: (j * dilation_h - ch, i * dilation_w - cw)."""
        ch, cw = self.window_centre
        return [(j * self.dilation_h - ch, i * self.dilation_w - cw) for i, j in self.kernel_points()]

    def window_centres(self, out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 input coordinates of each output row's and column's window centre: (rows [Ho], cols [Wo])."""
        ch, cw = self.window_centre
        rows = torch.arange(out_h, dtype=torch.float64) * self.stride_h - self.pad_h + ch
        cols = torch.arange(out_w, dtype=torch.float64) * self.stride_w - self.pad_w + cw
        return rows, cols

    def base_positions(self, out_h: int, out_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 sampling (y [Ho, 1, P], x [1, Wo, P]) of every point with a zero offset: the window centre
        plus the point's displacement times offset_scale (the contract's sampling position, offset aside)."""
        rows, cols = self.window_centres(out_h, out_w)
        dy, dx = (torch.tensor(axis, dtype=torch.float64) for axis in zip(*self.point_displacements()))
        return rows[:, None, None] + dy * self.offset_scale, cols[None, :, None] + dx * self.offset_scale

    def layout(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(Ho, Wo, offset's last dimension, mask's last dimension), None for an empty output; cached."""
        key = (height, width)
        layout = self._layouts.get(key, False)
        if layout is False:
            try:
                out_h, out_w = self.output_size(height, width)
            except ValueError:
                layout = None
            else:
                layout = (out_h, out_w, self.group * self.points * 2, self.group * self.points)
            self._layouts[key] = layout
        return layout

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(Ho, Wo) for an input of height x width; ValueError when either is not positive."""
        out_h = (height + 2 * self.pad_h - (self.dilation_h * (self.kernel_h - 1) + 1)) // self.stride_h + 1
        out_w = (width + 2 * self.pad_w - (self.dilation_w * (self.kernel_w - 1) + 1)) // self.stride_w + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(
                f"input spatial size (H={height}, W={width}) gives an empty output "
                f"(Ho={out_h}, Wo={out_w}) with kernel=({self.kernel_h}, {self.kernel_w}), "
                f"pad=({self.pad_h}, {self.pad_w}), dilation=({self.dilation_h}, {self.dilation_w}), "
                f"stride=({self.stride_h}, {self.stride_w})"
            )
        return out_h, out_w


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(sorted(dtype_name(d) for d in dtypes))


def validate(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    params: DCNv3Params,
    dtypes: Iterable[torch.dtype] | None = None,
    implementation: str = "",
) -> tuple[int, int]:
    """Check tensors against params per the contract; return (Ho, Wo).

    Runs on every call of every implementation (the native kernel takes
    30 us on InternImage-T's last stage), so valid input is accepted by a
    few comparisons in one expression; anything else goes through the
    checks one by one, which name what is wrong.
    """
    accepted = _accepted(input, offset, mask, params, dtypes)
    if accepted is not None:
        return accepted
    return _check_one_by_one(input, offset, mask, params, dtypes, implementation)


def _accepted(input, offset, mask, params, dtypes) -> tuple[int, int] | None:
    """(Ho, Wo) when every check passes, else None (including when unsure): 1 us instead of 2."""
    if not (
        isinstance(params, DCNv3Params)
        and isinstance(input, torch.Tensor)
        and isinstance(offset, torch.Tensor)
        and isinstance(mask, torch.Tensor)
        and input.dim() == 4
    ):
        return None
    dtype, device = input.dtype, input.device
    if not (
        offset.dtype == dtype
        and mask.dtype == dtype
        and (dtypes is None or dtype in dtypes)
        and offset.device == device
        and mask.device == device
    ):
        return None
    batch, height, width, channels = input.shape
    layout = params.layout(height, width)
    if layout is None or channels != params.channels:
        return None
    out_h, out_w, offset_last, mask_last = layout
    if offset.shape != (batch, out_h, out_w, offset_last) or mask.shape != (batch, out_h, out_w, mask_last):
        return None
    return out_h, out_w


def _check_one_by_one(input, offset, mask, params, dtypes, implementation) -> tuple[int, int]:
    if not isinstance(params, DCNv3Params):
        raise ValueError(f"params must be a DCNv3Params, got {type(params).__name__}")
    tensors = {"input": input, "offset": offset, "mask": mask}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (N, H, W, C), got shape {tuple(tensor.shape)}")

    device, dtype = input.device, input.dtype
    for name in ("offset", "mask"):
        tensor = tensors[name]
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but input is on {device}")
        if tensor.dtype != dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but input has {dtype}")
    if dtypes is not None and dtype not in dtypes:
        who = f"{implementation} " if implementation else ""
        raise ValueError(f"input dtype {dtype} is not supported by {who}(supports {_dtype_names(dtypes)})")

    batch, height, width, channels = input.shape
    if channels != params.channels:
        raise ValueError(
            f"input channels C={channels} != group*group_channels = "
            f"{params.group}*{params.group_channels} = {params.channels}"
        )
    out_h, out_w = params.output_size(height, width)
    points = params.points
    expected_last = {"offset": params.group * points * 2, "mask": params.group * points}
    for name, last in expected_last.items():
        shape = tensors[name].shape
        if shape == (batch, out_h, out_w, last):
            continue
        if shape[3] != last:
            formula = "group*P*2" if name == "offset" else "group*P"
            raise ValueError(
                f"{name} last dimension is {shape[3]}, expected {formula} = {last} "
                f"(group={params.group}, P={points})"
            )
        if tuple(shape[1:3]) != (out_h, out_w):
            raise ValueError(f"{name} spatial size is {tuple(shape[1:3])}, expected (Ho, Wo) = {(out_h, out_w)}")
        raise ValueError(f"{name} batch is {shape[0]}, input batch is {batch}")
    return out_h, out_w
