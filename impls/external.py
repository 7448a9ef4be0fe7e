"""Bring your own kernel: anything with InternImage's `DCNv3Function.apply` signature becomes an implementation,
and for `--op msda` anything with Deformable DETR's `MSDeformAttnFunction.apply` signature.

    python -m parity --impl-module my_port.dcnv3:DCNv3Function --device cuda --dtype float32
    python -m bench  --impl-module my_port.dcnv3:DCNv3Function
    python -m parity --op msda --impl-module my_port.ms_deform_attn:MSDeformAttnFunction

`package.module:Name` names an `Implementation` (used as it is), an autograd
Function (its `apply` is called) or any callable taking DCNv3's
`(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
dilation_h, dilation_w, group, group_channels, offset_scale, im2col_step,
remove_center)` or MSDA's `(value, value_spatial_shapes, value_level_start_index,
sampling_locations, attention_weights, im2col_step)`. It is registered under
`Name`, claims every floating dtype and device (choose with `--device` and
`--dtype`); a call that raises fails its parity case with the error shown, it
does not stop the gate.
"""

from __future__ import annotations

import dataclasses
import importlib

from impls import devices
from impls.params import DCNv3Params
from impls.registry import FLOATING, REGISTRIES, Implementation

# InternImage's DCNv3 module passes 256; its CUDA kernel takes min(batch, im2col_step) images at a time.
IM2COL_STEP = 256
# Deformable DETR's MSDeformAttn module passes 64.
MSDA_IM2COL_STEP = 64


def with_apply_signature(apply):
    """`fn(input, offset, mask, params)` calling `apply` in DCNv3Function.apply's argument order."""

    def run(input, offset, mask, params: DCNv3Params):
        *leading, offset_scale, remove_center = params.scalars()
        return apply(input, offset, mask, *leading, offset_scale, IM2COL_STEP, remove_center)

    return run


def with_msda_apply_signature(apply):
    """`fn(value, spatial_shapes, level_start_index, locations, weights)` calling MSDeformAttnFunction.apply."""

    def run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, MSDA_IM2COL_STEP)

    return run


SIGNATURES = {"dcnv3": (with_apply_signature, "DCNv3Function.apply"),
              "msda": (with_msda_apply_signature, "MSDeformAttnFunction.apply")}


def from_spec(spec: str, operator: str = "dcnv3") -> Implementation:
    """The implementation `package.module:Name` names; ValueError saying what is wrong otherwise."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"--impl-module {spec!r}: expected package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"--impl-module {spec!r}: cannot import {module_name}: {devices.describe(error)}") from None
    target = getattr(module, attribute, None)
    if target is None:
        raise ValueError(f"--impl-module {spec!r}: {module_name} has no attribute {attribute!r}")
    registry = REGISTRIES[operator]
    if isinstance(target, Implementation):
        if target.operator != registry.operator:
            raise ValueError(f"--impl-module {spec!r} implements {target.operator.name}, not {operator}")
        return dataclasses.replace(target, origin=spec)
    apply = getattr(target, "apply", target)
    if not callable(apply):
        raise ValueError(f"--impl-module {spec!r}: {attribute} is neither callable nor has an apply method")
    wrap, signature = SIGNATURES[operator]
    return Implementation(
        name=attribute, fn=wrap(apply), dtypes=frozenset(FLOATING), device_types=devices.DEVICE_TYPES,
        description=f"{spec}, called as {signature}", origin=spec, operator=registry.operator,
    )


def add_option(add, verb: str) -> None:
    """Declare --impl-module with `add`: an argparse parser's add_argument or pytest's addoption."""
    add("--impl-module", action="append", default=[], metavar="PACKAGE.MODULE:NAME",
        help=f"also {verb} a callable with DCNv3Function.apply's signature (MSDeformAttnFunction.apply's with "
             "--op msda), as NAME (repeatable; impls/external.py)")


def load(specs, operator: str = "dcnv3") -> list[Implementation]:
    """Register every spec's implementation with the operator's registry; the list of them."""
    loaded = [from_spec(spec, operator) for spec in specs or []]
    for impl in loaded:
        REGISTRIES[operator].add(impl)
    return loaded
