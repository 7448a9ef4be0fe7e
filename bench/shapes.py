"""Benchmark shapes as data: InternImage stages, whole InternImage backbones, synthetic sweeps, quick suites;
and for MSDA (`msda-*` suites) the MSDeformAttn calls of Deformable DETR, Mask2Former and ViT-Adapter.

InternImage's models are impls.internimage.CONFIGS: stage s of 4 runs DCNv3 at
H = W = input / 2**(s+2) with channels * 2**s channels in groups[s] groups;
kernel 3, pad 1, stride 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

from impls import DCNv3Params, internimage as models

INTERNIMAGE = [name for name in models.CONFIGS if name != "mini"]  # mini is no InternImage model
CLASSIFICATION_BATCH = 1
SEGMENTATION_BATCH = 2
# Whole backbones: the classification size at batch 1, and one segmentation crop (batch 1, so that a
# CPU run of InternImage-T takes minutes, not an hour).
MODEL_BATCH = 1


@dataclass(frozen=True)
class Shape:
    OPERATOR: ClassVar[str] = "dcnv3"

    name: str
    batch: int
    height: int
    width: int
    params: DCNv3Params

    @property
    def output_size(self) -> tuple[int, int]:
        return self.params.output_size(self.height, self.width)

    def fields(self) -> dict:
        """Flat columns for tidy rows."""
        row = {"shape": self.name, "N": self.batch, "H": self.height, "W": self.width}
        row.update(asdict(self.params))
        return row


def same_padding_params(group: int, group_channels: int, offset_scale: float = 1.0, kernel: int = 3,
                        remove_center: bool = False) -> DCNv3Params:
    """A square kernel at stride 1 padded to keep the image's size, as InternImage's DCNv3 layers are."""
    pad = (kernel - 1) // 2
    return DCNv3Params(kernel, kernel, 1, 1, pad, pad, 1, 1, group, group_channels, offset_scale, remove_center)


@dataclass(frozen=True)
class ModelCase:
    """A whole backbone (impls.internimage) on square images: one forward or training step."""

    OPERATOR: ClassVar[str] = "dcnv3"

    name: str
    model: str
    batch: int
    size: int

    @property
    def config(self) -> models.Config:
        return models.named(self.model)

    def fields(self) -> dict:
        return {"shape": self.name, "model": self.model, "N": self.batch, "H": self.size, "W": self.size}


@dataclass(frozen=True)
class MSDAShape:
    """One MSDeformAttn call of a model: levels (H_l, W_l), Lq queries, M heads of D channels, P points."""

    OPERATOR: ClassVar[str] = "msda"

    name: str
    batch: int
    levels: tuple[tuple[int, int], ...]
    queries: int
    heads: int
    channels: int
    points: int

    @property
    def length(self) -> int:
        return sum(h * w for h, w in self.levels)

    def fields(self) -> dict:
        return {"shape": self.name, "N": self.batch, "levels": "+".join(f"{h}x{w}" for h, w in self.levels),
                "S": self.length, "Lq": self.queries, "M": self.heads, "D": self.channels, "P": self.points}


def feature_levels(height: int, width: int, strides) -> tuple[tuple[int, int], ...]:
    """The feature maps of a height x width image at these strides (a ResNet's or an adapter's, ceil-rounded)."""
    return tuple((math.ceil(height / s), math.ceil(width / s)) for s in strides)


def _msda_suites() -> dict[str, list[MSDAShape]]:
    """Deformable DETR on an 800x1333 image (strides 8-64, M=8, D=32, P=4: its encoder's queries are every
    position, its decoder's 300 object queries); Mask2Former's pixel decoder on a 512x512 ADE20K crop (3
    levels at strides 8-32); ViT-Adapter-B on a 512x512 crop (12 heads, deform_ratio 0.5: D=32): the
    injector's queries are the ViT's stride-16 tokens over the adapter's 3 levels, the extractor's the
    adapter's tokens over the ViT's one level. Each at batch 1 and 2."""
    detr = feature_levels(800, 1333, (8, 16, 32, 64))
    adapter = feature_levels(512, 512, (8, 16, 32))
    models = {
        "detr-enc": (detr, sum(h * w for h, w in detr), 8, 32, 4),
        "detr-dec": (detr, 300, 8, 32, 4),
        "m2f-pixel-dec": (adapter, sum(h * w for h, w in adapter), 8, 32, 4),
        "vitadapter-injector": (adapter, 32 * 32, 12, 32, 4),
        "vitadapter-extractor": (((32, 32),), sum(h * w for h, w in adapter), 12, 32, 4),
    }
    shapes = {name: [MSDAShape(f"{name}-b{batch}", batch, *model) for batch in (1, 2)] for name, model in models.items()}
    return {
        "msda-quick": [MSDAShape("q-2lv", 1, ((16, 16), (8, 8)), 100, 4, 16, 4),
                       MSDAShape("q-4lv", 1, feature_levels(128, 96, (8, 16, 32, 64)), 60, 8, 8, 4)],
        "msda-deformable-detr": shapes["detr-enc"] + shapes["detr-dec"],
        "msda-mask2former": shapes["m2f-pixel-dec"],
        "msda-vit-adapter": shapes["vitadapter-injector"] + shapes["vitadapter-extractor"],
        "msda": [shape for group in shapes.values() for shape in group],
    }


def internimage(model: str, task: str, batch: int | None = None) -> list[Shape]:
    config = models.named(model)
    size = config.classification_size if task == "cls" else config.segmentation_size
    default_batch = CLASSIFICATION_BATCH if task == "cls" else SEGMENTATION_BATCH
    suffix = f"-b{batch}" if batch and batch != default_batch else ""
    batch = batch or default_batch
    shapes = []
    for stage, group in enumerate(config.groups):
        side = size // 2 ** (stage + 2)
        shapes.append(Shape(
            name=f"{model}-{task}{size}-s{stage + 1}{suffix}", batch=batch, height=side, width=side,
            params=same_padding_params(group, config.stage_channels(stage) // group, config.offset_scale),
        ))
    return shapes


def model_cases(model: str) -> list[ModelCase]:
    config = models.named(model)
    return [ModelCase(f"{config.name}-{task}{size}", config.name, MODEL_BATCH, size)
            for task, size in (("cls", config.classification_size), ("seg", config.segmentation_size))]


def _sweeps() -> dict[str, list[Shape]]:
    t_stage1 = dict(group=4, group_channels=16)
    return {
        "sweep-resolution": [
            Shape(f"res{side}", 1, side, side, same_padding_params(**t_stage1)) for side in (14, 28, 56, 112, 224)
        ],
        "sweep-channels": [
            Shape(f"D{d}", 1, 56, 56, same_padding_params(4, d)) for d in (8, 16, 32, 64, 128)
        ],
        "sweep-groups": [
            Shape(f"G{g}", 1, 56, 56, same_padding_params(g, 256 // g)) for g in (1, 4, 8, 16, 32)
        ],
        "sweep-kernel": [
            Shape(f"k{k}{'-rc' if rc else ''}", 1, 56, 56, same_padding_params(4, 16, kernel=k, remove_center=rc))
            for k in (3, 5) for rc in (False, True)
        ],
    }


def _internimage_suites() -> dict[str, list[Shape]]:
    suites = {}
    for model in INTERNIMAGE:
        key = model.lower()
        suites[f"internimage-{key}-cls"] = internimage(model, "cls")
        suites[f"internimage-{key}-seg"] = internimage(model, "seg")
        suites[f"internimage-{key}"] = suites[f"internimage-{key}-cls"] + suites[f"internimage-{key}-seg"]
    # GPUs: classification at a training batch, segmentation as configured.
    suites["internimage-t-gpu"] = internimage("T", "cls", batch=64) + suites["internimage-t-seg"]
    suites["internimage"] = [s for model in INTERNIMAGE for s in suites[f"internimage-{model.lower()}"]]
    return suites


SUITES: dict[str, list[Shape] | list[ModelCase] | list[MSDAShape]] = {
    # Small enough for CI's smoke run of the whole pipeline on 2 cores.
    "quick": [
        Shape("q14-G2D8", 1, 14, 14, same_padding_params(2, 8)),
        Shape("q20-G4D16", 1, 20, 20, same_padding_params(4, 16)),
        Shape("q24-G4D16-rc", 1, 24, 24, same_padding_params(4, 16, remove_center=True)),
    ],
    **_internimage_suites(),
    **_sweeps(),
    **{f"model-internimage-{name.lower()}": model_cases(name) for name in models.CONFIGS},
    **_msda_suites(),
}
# Each operator's suite when none is named.
DEFAULT_SUITES = {"dcnv3": "internimage-t", "msda": "msda"}


def operator_of(suite_name: str) -> str:
    """The operator a suite's cases call."""
    return suite(suite_name)[0].OPERATOR


def is_model_suite(name: str) -> bool:
    return name.startswith("model-")


def suite(name: str) -> list[Shape] | list[ModelCase]:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}") from None
