"""`DCNv3`, the nn.Module InternImage's models use, with the core operator chosen by `impl=`.

Its constructor takes InternImage's arguments (`ops_dcnv3/modules/dcnv3.py`) and
its parameters carry InternImage's names (`input_proj`, `dw_conv.0` /
`dw_conv.1.1`, `offset`, `mask`, `output_proj`, `center_feature_scale_proj_*`),
so the DCNv3 layers of an InternImage checkpoint load into it with
`load_state_dict`. Its forward is InternImage's: a depthwise convolution,
norm and activation of the input give the offsets and the masks (softmax
over each group's points); the core samples the input projection with them;
the optional centre feature scale blends the core's result with the input
projection; the output projection comes last.

    layer = impls.nn.DCNv3(channels=64, group=4, impl="cpu_kernel")
    layer.load_state_dict(checkpoint_layer)      # an InternImage DCNv3 layer's weights
    y = layer(x)                                 # x: [N, H, W, channels], channels-last
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import impls

# InternImage's module passes 256; it never changes the result.
IM2COL_STEP = 256
# The profiler's name for the core operator's forward (bench/profile.py attributes its backward too).
CORE_RANGE = "dcnv3_core"


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class ChannelsFirst(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def normalization(channels: int, kind: str, in_format: str = "channels_last", out_format: str = "channels_last",
               eps: float = 1e-6) -> nn.Sequential:
    """InternImage's build_norm_layer: LayerNorm over channels-last, BatchNorm over channels-first,
    with the permutes between, in a Sequential (so the parameters keep InternImage's indices)."""
    if kind == "LN":
        layers = [ChannelsLast()] if in_format == "channels_first" else []
        layers.append(nn.LayerNorm(channels, eps=eps))
        if out_format == "channels_first":
            layers.append(ChannelsFirst())
    elif kind == "BN":
        layers = [ChannelsFirst()] if in_format == "channels_last" else []
        layers.append(nn.BatchNorm2d(channels))
        if out_format == "channels_last":
            layers.append(ChannelsLast())
    else:
        raise ValueError(f"norm_layer must be 'LN' or 'BN', got {kind!r}")
    return nn.Sequential(*layers)


def activation(kind: str) -> nn.Module:
    layers = {"GELU": nn.GELU, "ReLU": nn.ReLU, "SiLU": nn.SiLU}
    if kind not in layers:
        raise ValueError(f"act_layer must be one of {', '.join(layers)}, got {kind!r}")
    return layers[kind]()


class DCNv3(nn.Module):
    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1, group=4,
                 offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False, *, impl: str = "auto"):
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"channels must be divisible by group, got channels={channels}, group={group}")
        if remove_center and kernel_size % 2 == 0:
            raise ValueError(f"remove_center needs an odd kernel_size, got {kernel_size}")
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        points = kernel_size * kernel_size - int(remove_center)
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.kernel_size, self.stride, self.pad, self.dilation = kernel_size, stride, pad, dilation
        self.offset_scale, self.remove_center = offset_scale, int(remove_center)
        self.center_feature_scale = center_feature_scale
        self.impl = impl
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels),
            normalization(channels, norm_layer, "channels_first", "channels_last"),
            activation(act_layer),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """InternImage's initialisation: zero offsets, uniform masks, Xavier projections."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input [N, H, W, channels] -> [N, H, W, channels]."""
        batch, height, width, _ = input.shape
        projected = self.input_proj(input)
        features = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(features)
        mask = F.softmax(self.mask(features).reshape(batch, height, width, self.group, -1), -1)
        mask = mask.reshape(batch, height, width, -1).type(projected.dtype)
        with torch.profiler.record_function(CORE_RANGE):
            output = impls.dcnv3(
                projected, offset, mask, self.kernel_size, self.kernel_size, self.stride, self.stride,
                self.pad, self.pad, self.dilation, self.dilation, self.group, self.group_channels,
                self.offset_scale, IM2COL_STEP, self.remove_center, impl=self.impl,
            )
        if self.center_feature_scale:
            scale = F.linear(features, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
            scale = scale.repeat_interleave(self.group_channels, dim=-1)
            output = output * (1 - scale) + projected * scale
        return self.output_proj(output)
