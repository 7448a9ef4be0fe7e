"""A pure-PyTorch DCNv3 that is really faster than the grid_sample fallback.

Same F.grid_sample at its core, with the work around it removed (measured on
the InternImage-T shapes, CPU float32; see the resolution of issue 4):

- no F.pad copy: zeros outside come from grid_sample's own zero padding, with
  the grid normalised to the unpadded input;
- the base grid (reference points + kernel displacements, already normalised)
  is cached per shape, parameters, device and dtype; offsets enter through one
  fused affine written straight into the layout grid_sample wants
  (`addcmul(..., out=)`), so neither the grid nor its `.repeat(N)` is rebuilt;
- points are laid out `[N*G, P, Ho*Wo]`, so the mask-weighted sum over points
  runs along contiguous Ho*Wo (`addcmul_` per point into one accumulator)
  instead of a `[N*G, D, Ho*Wo, P]` product summed over an inner dimension of
  P = 9;
- one image at a time, grid_sample reads a strided view of the channels-last
  input instead of a transposed copy; on CPU the batch is split so that each
  pass's temporaries stay below glibc's 32 MB mmap ceiling (recycled from the
  heap instead of page-faulted in on every call);
- a custom autograd.Function: the backward forms grad of the sampled tensor in
  one broadcast multiply into one buffer shared by the chunks, calls
  grid_sampler_2d_backward once per chunk, and accumulates the mask gradient
  channel by channel into its [N, G, P, Ho*Wo] result, where autograd through
  the forward would build a full-size zero tensor for every point's slice.

One code path for cpu, cuda and npu. float16 and bfloat16 compute in float32
and cast back, as the contract asks.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from impls.params import DCNv3Params
from impls.registry import register

BILINEAR, ZEROS = 0, 0  # grid_sampler_2d's enum values for mode and padding_mode


@functools.lru_cache(maxsize=64)
def _base_grid(params: DCNv3Params, height: int, width: int, out_h: int, out_w: int,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised grid_sample coordinates of every point with zero offset: [1, 1, P, Ho, Wo, 2]."""
    y, x = (axis.permute(2, 0, 1) for axis in params.base_positions(out_h, out_w))  # [P, Ho, 1], [P, 1, Wo]
    # align_corners=False: pixel c sits at (2c + 1) / size - 1.
    grid = torch.stack(torch.broadcast_tensors((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), -1)
    return grid[None, None].to(device=device, dtype=dtype)


def _sampling_grid(offset, params: DCNv3Params, height, width, dtype):
    """[N*G, P, Ho*Wo, 2] grid: the cached base plus offsets scaled in the same affine."""
    batch, out_h, out_w, _ = offset.shape
    group, points = params.group, params.points
    base = _base_grid(params, height, width, out_h, out_w, offset.device, dtype)
    pairs = offset.view(batch, out_h, out_w, group, points, 2).permute(0, 3, 4, 1, 2, 5)
    scale = torch.tensor(
        [2 * params.offset_scale / width, 2 * params.offset_scale / height], device=offset.device, dtype=dtype
    )
    grid = torch.empty(batch, group, points, out_h, out_w, 2, device=offset.device, dtype=dtype)
    torch.addcmul(base, pairs.to(dtype), scale, out=grid)
    return grid.view(batch * group, points, out_h * out_w, 2), scale


def _transposed(matrices: torch.Tensor) -> torch.Tensor:
    """[B, M, K] -> contiguous [B, K, M]: the NHWC <-> NCHW moves."""
    return matrices.transpose(1, 2).contiguous()


def _grouped(input, params: DCNv3Params):
    """[n, H, W, G*D] -> [n*G, D, H, W], grid_sample's layout.

    For one image this is a strided view of the channels-last input, no copy:
    grid_sample reads it as fast as a contiguous copy (measured, CPU).
    """
    batch, height, width, _ = input.shape
    grouped = input.view(batch, height, width, params.group, params.group_channels).permute(0, 3, 4, 1, 2)
    return grouped.reshape(batch * params.group, params.group_channels, height, width)


def _mask_by_point(mask, params: DCNv3Params):
    """[N, Ho, Wo, G*P] -> [N, G, P, Ho*Wo], contiguous: multiplies with a strided mask ran 3.5x slower."""
    batch, out_h, out_w, _ = mask.shape
    return _transposed(mask.reshape(batch, out_h * out_w, params.group * params.points)).view(
        batch, params.group, params.points, out_h * out_w
    )


def _store_channels_last(planes, destination):
    """[n, ..., H*W] into a contiguous [n, H, W, C] slice: the inverse move, for outputs and
    gradients, written in place (a transposed copy and then an assignment moved it twice)."""
    batch, height, width, channels = destination.shape
    destination.view(batch, height * width, channels).copy_(planes.reshape(batch, channels, height * width).transpose(1, 2))


# Below this many sampled elements one broadcast multiply and one reduction beat
# a loop (launch overhead); above it the loop's smaller temporaries win (page
# faults of fresh multi-MB buffers). Measured on the InternImage-T stages, CPU:
# the crossover lies between T-cls224-s3 (451k elements) and -s2 (903k).
SMALL = 2**19


def _sum_of_products(left, right, dim: int, scratch: torch.Tensor | None = None):
    """(left * right).sum(dim), broadcasting right; the product goes into `scratch`
    (left's shape) where given, so that it adds nothing to the peak.

    Above SMALL, accumulated slice by slice into the result instead: the output's
    point sum (over P, dim 3) and the mask gradient's channel sum (over D, dim 2;
    2.2-2.7x faster than a multiply and a sum per point on T-seg512-s1..s3, each
    call over one contiguous [P, HoWo] block per group).
    """
    if left.numel() <= SMALL:
        return torch.mul(left, right, out=scratch).sum(dim)
    result = left.select(dim, 0) * right.select(dim, 0)
    for index in range(1, left.shape[dim]):
        result.addcmul_(left.select(dim, index), right.select(dim, index))
    return result


def _permute_pairs(pairs, dims):
    """Permute a [..., 2] tensor moving each (x, y) pair as one 8-byte element: a copy
    whose innermost run is 2 floats ran 3x slower. The words are int64, not float64:
    an NPU has no float64 arithmetic, and an integer copy moves the bits as they are."""
    if pairs.dtype != torch.float32:
        return pairs.permute(*dims, pairs.dim() - 1)
    as_words = pairs.contiguous().view(torch.int64).squeeze(-1)
    return as_words.permute(*dims).contiguous().unsqueeze(-1).view(torch.float32)


# glibc recycles freed blocks below its largest mmap threshold (32 MB) from the
# heap; larger temporaries are mmapped and page-faulted in on every call.
CPU_TEMPORARY_BUDGET = 24 * 2**20


def _temporary_budget_bytes(device: torch.device) -> int | None:
    """How large one pass's big temporaries should be on device; None: no limit.

    On CPU the batch is split to stay under it (measured on the
    InternImage-T segmentation shapes); accelerators' caching allocators reuse
    blocks of any size, and fewer, larger launches pay there.
    """
    return CPU_TEMPORARY_BUDGET if device.type == "cpu" else None


def _batch_chunks(batch: int, sampled_bytes_per_image: int, device: torch.device) -> list[slice]:
    budget = _temporary_budget_bytes(device)
    per_chunk = max(batch, 1) if budget is None else max(1, budget // max(sampled_bytes_per_image, 1))
    return [slice(first, min(first + per_chunk, batch)) for first in range(0, batch, per_chunk)]


def _group_slice(part: slice, group: int) -> slice:
    return slice(part.start * group, part.stop * group)


class _DCNv3GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, params: DCNv3Params):
        out_dtype = input.dtype
        dtype = torch.promote_types(out_dtype, torch.float32)
        input = input.to(dtype)
        batch, height, width, channels = input.shape
        _, out_h, out_w, _ = offset.shape
        group, points, group_channels = params.group, params.points, params.group_channels

        grid, scale = _sampling_grid(offset, params, height, width, dtype)
        weights = _mask_by_point(mask.to(dtype), params).unsqueeze(2)  # [N, G, 1, P, HoWo]
        sampled_bytes = channels * points * out_h * out_w * input.element_size()
        parts = _batch_chunks(batch, sampled_bytes, input.device)
        output = torch.empty(batch, out_h, out_w, channels, device=input.device, dtype=dtype)
        sampled_parts = []
        for part in parts:
            sampled = F.grid_sample(
                _grouped(input[part], params), grid[_group_slice(part, group)],
                mode="bilinear", padding_mode="zeros", align_corners=False,
            ).view(part.stop - part.start, group, group_channels, points, out_h * out_w)
            _store_channels_last(_sum_of_products(sampled, weights[part], dim=3), output[part])
            sampled_parts.append(sampled)

        ctx.save_for_backward(input, grid, weights, scale, *sampled_parts)
        ctx.params, ctx.parts, ctx.out_dtype, ctx.offset_shape = params, parts, out_dtype, offset.shape
        return output.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, grid, weights, scale, *sampled_parts = ctx.saved_tensors
        params = ctx.params
        batch, _, _, channels = input.shape
        _, out_h, out_w, _ = ctx.offset_shape
        group, points, group_channels = params.group, params.points, params.group_channels
        grad_output = grad_output.to(input.dtype)

        grad_input = torch.empty_like(input)
        grad_grid = torch.empty_like(grid)
        grad_mask = torch.empty(batch, out_h, out_w, group * points, device=input.device, dtype=input.dtype)
        # One buffer for every part (the first is the largest): later parts reuse its pages. An empty
        # batch has no part and gives empty gradients.
        grad_sampled_buffer = torch.empty_like(sampled_parts[0]) if sampled_parts else None
        for part, sampled in zip(ctx.parts, sampled_parts):
            images = part.stop - part.start
            # [n, Ho, Wo, G*D] -> [n, G, D, 1, Ho*Wo], contiguous: every multiply below runs along Ho*Wo.
            upstream = _transposed(grad_output[part].reshape(images, out_h * out_w, channels))
            upstream = upstream.view(images, group, group_channels, 1, out_h * out_w)
            grad_sampled = grad_sampled_buffer[:images]
            # grad_sampled's buffer holds the product first: it is overwritten just below.
            _store_channels_last(_sum_of_products(sampled, upstream, dim=2, scratch=grad_sampled), grad_mask[part])
            torch.mul(upstream, weights[part], out=grad_sampled)
            grad_image, grad_grid[_group_slice(part, group)] = torch.ops.aten.grid_sampler_2d_backward(
                grad_sampled.view(images * group, group_channels, points, out_h * out_w),
                _grouped(input[part], params), grid[_group_slice(part, group)],
                BILINEAR, ZEROS, False, [True, True],
            )
            _store_channels_last(grad_image, grad_input[part])

        grad_grid = grad_grid.view(batch, group, points, out_h, out_w, 2)
        # Per coordinate, in place: a broadcast over a last dimension of 2 ran 3x slower.
        grad_grid[..., 0].mul_(scale[0])
        grad_grid[..., 1].mul_(scale[1])
        grad_offset = _permute_pairs(grad_grid, (0, 3, 4, 1, 2)).reshape(ctx.offset_shape)
        dtype = ctx.out_dtype
        return grad_input.to(dtype), grad_offset.to(dtype), grad_mask.to(dtype), None


@register("optimized", priority=10)
def optimized(input, offset, mask, params):
    """grid_sample at the core, with a cached grid, no padding copy, a point-major weighted sum and a hand-written backward."""
    return _DCNv3GridSample.apply(input, offset, mask, params)
