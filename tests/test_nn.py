"""impls.nn.DCNv3 (InternImage's module) and the InternImage backbone built on it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import impls
from impls import internimage
from impls.nn import DCNv3
from parity import model as model_parity

# The parameters of InternImage's DCNv3 module (ops_dcnv3/modules/dcnv3.py), as its checkpoints name them.
INTERNIMAGE_DCNV3_KEYS = [
    "dw_conv.0.weight", "dw_conv.0.bias", "dw_conv.1.1.weight", "dw_conv.1.1.bias",
    "offset.weight", "offset.bias", "mask.weight", "mask.bias",
    "input_proj.weight", "input_proj.bias", "output_proj.weight", "output_proj.bias",
]
CENTER_FEATURE_SCALE_KEYS = ["center_feature_scale_proj_weight", "center_feature_scale_proj_bias"]


def internimage_checkpoint(channels, group, kernel, dw_kernel, remove_center, center_feature_scale, seed=0):
    """A state_dict in InternImage's format with random values, built from its shapes alone."""
    generator = torch.Generator().manual_seed(seed)
    points = kernel * kernel - int(remove_center)
    shapes = {
        "dw_conv.0.weight": (channels, 1, dw_kernel, dw_kernel), "dw_conv.0.bias": (channels,),
        "dw_conv.1.1.weight": (channels,), "dw_conv.1.1.bias": (channels,),
        "offset.weight": (group * points * 2, channels), "offset.bias": (group * points * 2,),
        "mask.weight": (group * points, channels), "mask.bias": (group * points,),
        "input_proj.weight": (channels, channels), "input_proj.bias": (channels,),
        "output_proj.weight": (channels, channels), "output_proj.bias": (channels,),
    }
    if center_feature_scale:
        shapes.update({"center_feature_scale_proj_weight": (group, channels),
                       "center_feature_scale_proj_bias": (group,)})
    return {name: torch.randn(shape, generator=generator, dtype=torch.float64) / 3 for name, shape in shapes.items()}


def internimage_formula(state, x, channels, group, kernel, dw_kernel, remove_center, center_feature_scale,
                        offset_scale):
    """InternImage's DCNv3.forward, written out with functional ops and the float64 reference core."""
    n, h, w, _ = x.shape
    projected = F.linear(x, state["input_proj.weight"], state["input_proj.bias"])
    features = F.conv2d(x.permute(0, 3, 1, 2), state["dw_conv.0.weight"], state["dw_conv.0.bias"],
                        padding=(dw_kernel - 1) // 2, groups=channels).permute(0, 2, 3, 1)
    features = F.gelu(F.layer_norm(features, (channels,), state["dw_conv.1.1.weight"], state["dw_conv.1.1.bias"],
                                   eps=1e-6))
    offset = F.linear(features, state["offset.weight"], state["offset.bias"])
    mask = F.linear(features, state["mask.weight"], state["mask.bias"]).reshape(n, h, w, group, -1)
    mask = mask.softmax(-1).reshape(n, h, w, -1)
    params = impls.DCNv3Params(kernel, kernel, 1, 1, 1, 1, 1, 1, group, channels // group, offset_scale,
                               remove_center)
    core = impls.get("reference")(projected, offset, mask, params)
    if center_feature_scale:
        scale = torch.sigmoid(F.linear(features, state["center_feature_scale_proj_weight"],
                                       state["center_feature_scale_proj_bias"]))
        scale = scale[..., None].repeat(1, 1, 1, 1, channels // group).flatten(-2)
        core = core * (1 - scale) + projected * scale
    return F.linear(core, state["output_proj.weight"], state["output_proj.bias"])


def test_parameter_names_are_internimages():
    assert sorted(DCNv3(channels=16, group=2).state_dict()) == sorted(INTERNIMAGE_DCNV3_KEYS)
    assert sorted(DCNv3(channels=16, group=2, center_feature_scale=True).state_dict()) == sorted(
        INTERNIMAGE_DCNV3_KEYS + CENTER_FEATURE_SCALE_KEYS)


@pytest.mark.parametrize("kernel, dw_kernel, remove_center, center_feature_scale, offset_scale", [
    (3, None, False, False, 1.0),     # InternImage-T..XL
    (3, 5, False, True, 1.0),         # InternImage-H/G: dw kernel 5, centre feature scale
    (3, 3, True, False, 2.0),         # remove_center, offset_scale as in L/XL
])
def test_loads_an_internimage_layer_and_computes_its_formula(kernel, dw_kernel, remove_center,
                                                             center_feature_scale, offset_scale):
    channels, group = 12, 3
    state = internimage_checkpoint(channels, group, kernel, dw_kernel or kernel, remove_center, center_feature_scale)
    layer = DCNv3(channels=channels, kernel_size=kernel, dw_kernel_size=dw_kernel, group=group,
                  offset_scale=offset_scale, remove_center=remove_center,
                  center_feature_scale=center_feature_scale, impl="optimized").double()
    layer.load_state_dict(state)  # strict: every name and shape is InternImage's
    x = torch.randn(2, 5, 6, channels, dtype=torch.float64)
    expected = internimage_formula(state, x, channels, group, kernel, dw_kernel or kernel, remove_center,
                                   center_feature_scale, offset_scale)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_impl_chooses_the_core_and_rejects_what_internimage_rejects():
    with pytest.raises(ValueError, match="channels must be divisible by group"):
        DCNv3(channels=10, group=4)
    with pytest.raises(ValueError, match="remove_center needs an odd kernel_size"):
        DCNv3(channels=8, group=2, kernel_size=4, remove_center=True)
    layer = DCNv3(channels=8, group=2, impl="no_such_kernel")
    with pytest.raises(KeyError, match="no implementation named 'no_such_kernel'"):
        layer(torch.randn(1, 4, 4, 8))


def test_backbone_stages_and_internimage_names():
    model = internimage.build("mini", impl="optimized")
    outputs = model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    config = internimage.named("mini")
    assert [tuple(o.shape) for o in outputs] == [(1, 16 // 2**s, 16 // 2**s, config.stage_channels(s))
                                                 for s in range(4)]
    names = set(dict(model.named_parameters()))
    assert {"patch_embed.conv1.weight", "patch_embed.norm1.1.weight", "patch_embed.norm2.1.weight",
            "levels.0.blocks.0.dcn.dw_conv.1.1.weight", "levels.0.blocks.0.mlp.fc1.weight",
            "levels.0.norm.0.weight", "levels.0.downsample.conv.weight"} <= names
    # InternImage zeroes the offset and mask projections; build() spreads them so points move.
    assert all(model.levels[s].blocks[0].dcn.offset.weight.abs().max() > 0.1 for s in range(4))


def test_every_configuration_builds_with_internimage_parameters():
    """Each model's structure at toy widths (G is 3 billion parameters), run forward and backward."""
    for config in internimage.CONFIGS.values():
        # Four channels per group; stage 3 deep enough to reach the first of H/G's extra norms (block 5).
        small = dataclasses.replace(config, channels=4 * config.groups[0],
                                    depths=(1, 1, 6 if config.level2_post_norm_block_ids else 1, 1))
        model = internimage.build(small, impl="optimized")
        names = list(dict(model.named_parameters()))
        assert all(model_parity.family(name) for name in names)
        assert any(".gamma1" in n for n in names) == (config.layer_scale is not None)
        assert any("res_post_norm1" in n for n in names) == config.res_post_norm
        assert any(".post_norms." in n for n in names) == bool(config.level2_post_norm_block_ids)
        assert any("center_feature_scale_proj" in n for n in names) == config.center_feature_scale
        dw = model.levels[0].blocks[0].dcn.dw_conv[0].kernel_size
        assert dw == ((config.dw_kernel_size or 3),) * 2
        image = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
        outputs = model(image)
        named = list(model.named_parameters())
        grads = torch.autograd.grad(sum(o.sum() for o in outputs), [image] + [p for _, p in named],
                                    allow_unused=True)
        assert all(torch.isfinite(g).all() for g in grads if g is not None)
        # Unused at these depths: only the stage-3 norms after blocks this toy stage does not have.
        unused = {name.split(".")[3] for (name, _), g in zip(named, grads[1:]) if g is None}
        assert unused <= {str(i) for i in range(1, len(config.level2_post_norm_block_ids or ()))}


def test_same_seed_same_weights_and_implementations_agree_on_h():
    """H's extras (res-post-norm, stage-3 norms, centre feature scale, dw kernel 5) in float64."""
    small = dataclasses.replace(internimage.named("H"), channels=20, depths=(1, 1, 6, 1))
    a = internimage.build(small, impl="grid_sample", seed=3)
    b = internimage.build(small, impl="optimized", seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for x, y in zip(a(image), b(image)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
