"""A compact InternImage backbone (OpenGVLab/InternImage, classification/models/intern_image.py) on
`impls.nn.DCNv3`, for model-level parity and benchmarks, and its configurations as data.

The backbone is InternImage's without its heads: the stem (two stride-2
convolutions), four stages of DCNv3 blocks (DCNv3 and an MLP, each with
LayerNorm, as pre-norm, post-norm with layer scale, or res-post-norm), the
H/G models' extra norms inside stage 3, and a downsampling convolution between
stages. It returns the four stages' outputs, channels-last, as detection and
segmentation heads take them. Module and parameter names are InternImage's, so
the backbone part of an InternImage checkpoint loads. Stochastic depth and
dropout, which only act in training, are left out.

`build(config, impl=..., seed=...)` gives random weights (nothing is
downloaded) with InternImage's initialisation, except that the offset and mask
projections get a spread (`spread_sampling_`): InternImage starts them at zero,
which makes every offset 0 and every mask uniform, and would leave the
sampling untested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from impls import nn as dcnv3_nn


@dataclass(frozen=True)
class Config:
    """One InternImage model (its classification config, with its segmentation crop)."""

    name: str
    channels: int
    depths: tuple[int, int, int, int]
    groups: tuple[int, int, int, int]
    offset_scale: float
    classification_size: int
    segmentation_size: int
    layer_scale: float | None = None
    post_norm: bool = False
    mlp_ratio: float = 4.0
    dw_kernel_size: int | None = None
    res_post_norm: bool = False
    level2_post_norm_block_ids: tuple[int, ...] | None = None
    center_feature_scale: bool = False
    remove_center: bool = False

    def stage_channels(self, stage: int) -> int:
        return self.channels * 2**stage


# classification/configs/internimage_{t,s,b}_1k_224.yaml, internimage_{l,xl}_22kto1k_384.yaml,
# internimage_h_22kto1k_640.yaml, internimage_g_22kto1k_512.yaml; segmentation crops from the
# UperNet configs (512 for T/S/B, 640 for L/XL, 896 for H/G).
_H_G = dict(dw_kernel_size=5, center_feature_scale=True)
CONFIGS: dict[str, Config] = {
    config.name: config for config in [
        Config("T", 64, (4, 4, 18, 4), (4, 8, 16, 32), 1.0, 224, 512),
        Config("S", 80, (4, 4, 21, 4), (5, 10, 20, 40), 1.0, 224, 512, layer_scale=1e-5, post_norm=True),
        Config("B", 112, (4, 4, 21, 4), (7, 14, 28, 56), 1.0, 224, 512, layer_scale=1e-5, post_norm=True),
        Config("L", 160, (5, 5, 22, 5), (10, 20, 40, 80), 2.0, 384, 640, layer_scale=1e-5, post_norm=True),
        Config("XL", 192, (5, 5, 24, 5), (12, 24, 48, 96), 2.0, 384, 640, layer_scale=1e-5, post_norm=True),
        Config("H", 320, (6, 6, 32, 6), (10, 20, 40, 80), 1.0, 640, 896, res_post_norm=True,
               level2_post_norm_block_ids=(5, 11, 17, 23, 29), **_H_G),
        Config("G", 512, (2, 2, 48, 4), (16, 32, 64, 128), 1.0, 512, 896, post_norm=True,
               level2_post_norm_block_ids=(5, 11, 17, 23, 29, 35, 41, 47), **_H_G),
        # Not an InternImage model: T's structure at a size CI runs in seconds (16 channels per group).
        Config("mini", 16, (1, 1, 2, 1), (1, 2, 4, 8), 1.0, 64, 96),
    ]
}


def named(name: str) -> Config:
    """A configuration by its name (T, S, B, L, XL, H, G, mini), case-insensitive."""
    for key, value in CONFIGS.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(f"model must be one of {', '.join(CONFIGS)}, got {name!r}")


class StemLayer(nn.Module):
    def __init__(self, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels // 2, 3, stride=2, padding=1)
        self.norm1 = dcnv3_nn.normalization(out_channels // 2, "LN", "channels_first", "channels_first")
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1)
        self.norm2 = dcnv3_nn.normalization(out_channels, "LN", "channels_first", "channels_last")

    def forward(self, x):
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = dcnv3_nn.normalization(2 * channels, "LN", "channels_first", "channels_last")

    def forward(self, x):
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternImageLayer(nn.Module):
    def __init__(self, config: Config, channels: int, group: int, impl: str):
        super().__init__()
        self.norm1 = dcnv3_nn.normalization(channels, "LN")
        self.dcn = dcnv3_nn.DCNv3(
            channels=channels, kernel_size=3, stride=1, pad=1, dilation=1, group=group,
            offset_scale=config.offset_scale, dw_kernel_size=config.dw_kernel_size,
            center_feature_scale=config.center_feature_scale, remove_center=config.remove_center, impl=impl,
        )
        self.norm2 = dcnv3_nn.normalization(channels, "LN")
        self.mlp = MLPLayer(channels, int(channels * config.mlp_ratio))
        self.post_norm, self.res_post_norm = config.post_norm, config.res_post_norm
        self.layer_scale = config.layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(config.layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(config.layer_scale * torch.ones(channels))
        if self.res_post_norm:
            self.res_post_norm1 = dcnv3_nn.normalization(channels, "LN")
            self.res_post_norm2 = dcnv3_nn.normalization(channels, "LN")

    def forward(self, x):
        # InternImage's four residual forms, in its order of precedence.
        if self.layer_scale and self.post_norm:
            x = x + self.gamma1 * self.norm1(self.dcn(x))
            return x + self.gamma2 * self.norm2(self.mlp(x))
        if self.layer_scale:
            x = x + self.gamma1 * self.dcn(self.norm1(x))
            return x + self.gamma2 * self.mlp(self.norm2(x))
        if self.post_norm:
            x = x + self.norm1(self.dcn(x))
            return x + self.norm2(self.mlp(x))
        if self.res_post_norm:
            x = x + self.res_post_norm1(self.dcn(self.norm1(x)))
            return x + self.res_post_norm2(self.mlp(self.norm2(x)))
        x = x + self.dcn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class InternImageBlock(nn.Module):
    def __init__(self, config: Config, stage: int, impl: str):
        super().__init__()
        channels = config.stage_channels(stage)
        self.blocks = nn.ModuleList(
            [InternImageLayer(config, channels, config.groups[stage], impl) for _ in range(config.depths[stage])]
        )
        self.final_norm = not config.post_norm or config.center_feature_scale
        if self.final_norm:
            self.norm = dcnv3_nn.normalization(channels, "LN")
        self.post_norm_block_ids = config.level2_post_norm_block_ids if stage == 2 else None
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList(
                [dcnv3_nn.normalization(channels, "LN") for _ in self.post_norm_block_ids]
            )
        self.downsample = DownsampleLayer(channels) if stage < len(config.depths) - 1 else None

    def forward(self, x):
        """(this stage's output, the next stage's input)."""
        for index, block in enumerate(self.blocks):
            x = block(x)
            if self.post_norm_block_ids and index in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(index)](x)
        if self.final_norm:
            x = self.norm(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class InternImage(nn.Module):
    """The backbone: image [N, 3, H, W] -> four stage outputs [N, H/4/2**s, W/4/2**s, channels * 2**s]."""

    def __init__(self, config: Config, impl: str = "auto"):
        super().__init__()
        self.config = config
        self.patch_embed = StemLayer(config.channels)
        self.levels = nn.ModuleList([InternImageBlock(config, stage, impl) for stage in range(len(config.depths))])
        self.apply(_init_weights)
        for layer in dcnv3_layers(self):
            layer.reset_parameters()

    def set_impl(self, impl: str) -> InternImage:
        """Run every DCNv3 layer's core on `impl` (the weights stay as they are)."""
        for layer in dcnv3_layers(self):
            layer.impl = impl
        return self

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(image)
        outputs = []
        for level in self.levels:
            out, x = level(x)
            outputs.append(out)
        return tuple(outputs)


def dcnv3_layers(model: nn.Module) -> list[dcnv3_nn.DCNv3]:
    return [module for module in model.modules() if isinstance(module, dcnv3_nn.DCNv3)]


def _init_weights(module: nn.Module) -> None:
    """InternImage's _init_weights: truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def spread_sampling_(model: nn.Module, pixels: float = 1.0) -> nn.Module:
    """Give every DCNv3 layer's offset and mask projections weights of std pixels / sqrt(channels):
    after the depthwise branch's LayerNorm and GELU, offsets of about 0.7 pixel at pixels=1 and mask
    logits as spread, so points land between pixels and the masks differ."""
    with torch.no_grad():
        for dcn in dcnv3_layers(model):
            for projection in (dcn.offset, dcn.mask):
                projection.weight.normal_(0.0, pixels / dcn.channels**0.5)
    return model


def build(config: Config | str, impl: str = "auto", seed: int = 0, dtype: torch.dtype = torch.float64,
          device: torch.device | str = "cpu") -> InternImage:
    """The backbone with seeded random weights (the same for a seed whatever dtype or device), in eval mode."""
    config = named(config) if isinstance(config, str) else config
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = spread_sampling_(InternImage(config, impl=impl))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(device=device, dtype=dtype).eval()
