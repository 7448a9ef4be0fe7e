"""Ports carrying the defects of the contract's "published code differs" list (../shared/DCNv3.md): each
is the grid_sample fallback with one published mistake. The gate must fail every one on its regression
problem (tests/test_published_defects.py) and on a whole backbone (tests/test_model_parity.py)."""

from __future__ import annotations

import dataclasses

import torch

from impls.grid_sample import compute_dtype, dcnv3_grid_sample


def published_padding(input, offset, mask, params):
    """F.pad(input, [0, 0, pad_h, pad_h, pad_w, pad_w]): width padded by pad_h, height by pad_w."""
    swapped = dataclasses.replace(params, pad_h=params.pad_w, pad_w=params.pad_h)
    return dcnv3_grid_sample(input, offset, mask, swapped, compute_dtype(input.dtype))


def float32_positions(input, offset, mask, params):
    return dcnv3_grid_sample(input, offset, mask, params, torch.float32)


def offset_pair_swapped(input, offset, mask, params):
    """A port written from a "(dy, dx)" formula reads the pair the wrong way round."""
    pairs = offset.reshape(*offset.shape[:3], offset.shape[3] // 2, 2).flip(-1)
    return dcnv3_grid_sample(input, pairs.reshape(offset.shape), mask, params, compute_dtype(input.dtype))
