"""DCNv3 forward and backward as Triton kernels; imported only once Triton is known to load.

Motivation. The fallback samples with `grid_sample` on an NCHW copy of the
input and then reduces over points: several full-size intermediates and
transposes. DCNv3's channels-last layout lets one program own a block of
output pixels of one group: per sampling point it loads the point's offset and
mask once (one scalar per pixel) and the group's channels at each of the four
corners as one contiguous vector per pixel, and accumulates in float32 in
registers. Nothing but the output is written.

Backward. The same walk recomputes the sampled value and its x/y derivatives
from the four corners, reduces them over the group's channels against
grad_output (grad_mask, grad_offset: one writer per element, no atomics), and
scatters `mask * corner weight * grad_output` into the input gradient with
float32 `atomic_add`. Atomics because any output pixel may sample any input
pixel: a gather-side scheme would need the inverse of data-dependent offsets.
Consequence: grad_input is not bitwise reproducible from run to run (the order
of float additions varies), like InternImage's CUDA kernel; output, grad_offset
and grad_mask are.

Scheduling. A 1-D grid of programs walks the tiles (pixel block x group) with
a stride of the grid size: on a GPU the launcher starts one program per tile;
on Ascend (triton-ascend) a program is bound to a physical vector core, so the
launcher starts one per vector core and each walks its share.
"""

import torch
import triton
import triton.language as tl

from impls.triton_kernel import interpreted


@triton.jit
def _tile_coordinates(tile, pixels, out_h, out_w, GROUP: tl.constexpr, BLOCK_PIXELS: tl.constexpr):
    """(group, flat output pixel, n, ho, wo, in range) of a tile; pixel indices in int64.

    A tail tile's pixels past the end are clamped to the last one and masked out by
    `in_range`: every address stays inside its tensor (see _corner)."""
    group = tile % GROUP
    pixel = (tile // GROUP) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS).to(tl.int64)
    in_range = pixel < pixels
    pixel = tl.minimum(pixel, pixels - 1)
    wo = pixel % out_w
    ho = (pixel // out_w) % out_h
    n = pixel // (out_w * out_h)
    return group, pixel, n, ho, wo, in_range


@triton.jit
def _sampling_point(
    offset_ptr, mask_ptr, pixel, ho, wo, in_range, group, height, width, offset_scale, p,
    GROUP: tl.constexpr, POINTS: tl.constexpr, KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DILATION_H: tl.constexpr, DILATION_W: tl.constexpr, REMOVE_CENTER: tl.constexpr,
):
    """Point p of each pixel: its mask, (y, x), floor corner and bilinear fractions, all float32.

    Points run x-major (i over kernel_w outer); with REMOVE_CENTER the centre
    takes no index, so the kernel position is p shifted past it.
    """
    position = p
    if REMOVE_CENTER:
        position = tl.where(p >= (KERNEL_W // 2) * KERNEL_H + KERNEL_H // 2, p + 1, p)
    # DCNv3Params.window_centre, from the constexprs the kernel is specialised on.
    cw = (DILATION_W * (KERNEL_W - 1)) // 2
    ch = (DILATION_H * (KERNEL_H - 1)) // 2

    point = pixel * (GROUP * POINTS) + group * POINTS + p
    dx = tl.load(offset_ptr + 2 * point, mask=in_range, other=0.0).to(tl.float32)
    dy = tl.load(offset_ptr + 2 * point + 1, mask=in_range, other=0.0).to(tl.float32)
    weight = tl.load(mask_ptr + point, mask=in_range, other=0.0).to(tl.float32)
    x = (wo * STRIDE_W - PAD_W + cw).to(tl.float32) + ((position // KERNEL_H) * DILATION_W - cw) * offset_scale
    x += dx * offset_scale
    y = (ho * STRIDE_H - PAD_H + ch).to(tl.float32) + ((position % KERNEL_H) * DILATION_H - ch) * offset_scale
    y += dy * offset_scale
    # On or beyond the -1 / H / W lines a point contributes nothing (NaN positions fail too).
    inside = in_range & (y > -1.0) & (x > -1.0) & (y < height) & (x < width)
    y_floor = tl.floor(y)
    x_floor = tl.floor(x)
    y0 = tl.where(inside, y_floor, 0.0).to(tl.int64)
    x0 = tl.where(inside, x_floor, 0.0).to(tl.int64)
    # Fractions of 0 outside: finite, so that a corner's zero-filled read zeroes its terms in the backward
    # without a select per corner (Triton 3.6 miscompiles that select at narrow groups in float16 and
    # bfloat16: 'arith.select' op expected condition type to have the same shape, in
    # TritonGPURemoveLayoutConversions; Triton 3.9 compiles either).
    return point, weight, inside, y0, x0, tl.where(inside, y - y_floor, 0.0), tl.where(inside, x - x_floor, 0.0)


@triton.jit
def _corner(row, col, inside, height, width):
    """(corner in the image, row and col clamped into it).

    triton-ascend issues every load of a data-dependent masked access and selects
    afterwards, and turns a masked atomic add into an unmasked add of the selected
    value (its DiscreteMaskAccessConversionPass; triton-lang/triton-ascend#2332),
    so an address is formed only from a clamped corner, whose weight is then 0.
    """
    ok = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
    return ok, tl.minimum(tl.maximum(row, 0), height - 1), tl.minimum(tl.maximum(col, 0), width - 1)


@triton.jit
def dcnv3_forward_kernel(
    input_ptr, offset_ptr, mask_ptr, output_ptr,
    pixels, height, width, out_h, out_w, offset_scale, tiles,
    GROUP: tl.constexpr, GROUP_CHANNELS: tl.constexpr, CHANNELS: tl.constexpr, POINTS: tl.constexpr,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DILATION_H: tl.constexpr, DILATION_W: tl.constexpr,
    REMOVE_CENTER: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
):
    channel = tl.arange(0, BLOCK_CHANNELS)
    channel_ok = channel < GROUP_CHANNELS
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        group, pixel, n, ho, wo, in_range = _tile_coordinates(tile, pixels, out_h, out_w, GROUP, BLOCK_PIXELS)
        image = n * height * width * CHANNELS + group * GROUP_CHANNELS
        acc = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        # A runtime loop over points: unrolled, the compiler hoists every point's loads and spills.
        for p in range(POINTS):
            _, weight, inside, y0, x0, ly, lx = _sampling_point(
                offset_ptr, mask_ptr, pixel, ho, wo, in_range, group, height, width, offset_scale,
                p, GROUP, POINTS, KERNEL_H, KERNEL_W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DILATION_H, DILATION_W,
                REMOVE_CENTER,
            )
            for corner in tl.static_range(4):
                row = y0 + corner // 2
                col = x0 + corner % 2
                fy = ly if corner // 2 == 1 else 1.0 - ly
                fx = lx if corner % 2 == 1 else 1.0 - lx
                ok, row, col = _corner(row, col, inside, height, width)
                address = image + (row * width + col) * CHANNELS
                value = tl.load(
                    input_ptr + address[:, None] + channel[None, :],
                    mask=ok[:, None] & channel_ok[None, :], other=0.0,
                ).to(tl.float32)
                acc += tl.where(ok, weight * fy * fx, 0.0)[:, None] * value
        out = pixel[:, None] * CHANNELS + group * GROUP_CHANNELS + channel[None, :]
        tl.store(output_ptr + out, acc.to(output_ptr.dtype.element_ty),
                 mask=in_range[:, None] & channel_ok[None, :])


@triton.jit
def dcnv3_backward_kernel(
    input_ptr, offset_ptr, mask_ptr, grad_output_ptr,
    grad_input_ptr, grad_offset_ptr, grad_mask_ptr,
    pixels, height, width, out_h, out_w, offset_scale, tiles,
    GROUP: tl.constexpr, GROUP_CHANNELS: tl.constexpr, CHANNELS: tl.constexpr, POINTS: tl.constexpr,
    KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DILATION_H: tl.constexpr, DILATION_W: tl.constexpr,
    REMOVE_CENTER: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
):
    """grad_input_ptr is a zeroed float32 buffer; grad_offset and grad_mask are written in their dtype."""
    channel = tl.arange(0, BLOCK_CHANNELS)
    channel_ok = channel < GROUP_CHANNELS
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        group, pixel, n, ho, wo, in_range = _tile_coordinates(tile, pixels, out_h, out_w, GROUP, BLOCK_PIXELS)
        image = n * height * width * CHANNELS + group * GROUP_CHANNELS
        upstream = tl.load(
            grad_output_ptr + pixel[:, None] * CHANNELS + group * GROUP_CHANNELS + channel[None, :],
            mask=in_range[:, None] & channel_ok[None, :], other=0.0,
        ).to(tl.float32)
        for p in range(POINTS):
            point, weight, inside, y0, x0, ly, lx = _sampling_point(
                offset_ptr, mask_ptr, pixel, ho, wo, in_range, group, height, width, offset_scale,
                p, GROUP, POINTS, KERNEL_H, KERNEL_W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DILATION_H, DILATION_W,
                REMOVE_CENTER,
            )
            value = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
            d_value_dy = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
            d_value_dx = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
            for corner in tl.static_range(4):
                row = y0 + corner // 2
                col = x0 + corner % 2
                # Weight (1-ly or ly) * (1-lx or lx) and its derivatives in y and x.
                ok, row, col = _corner(row, col, inside, height, width)
                fy = ly if corner // 2 == 1 else 1.0 - ly
                fx = lx if corner % 2 == 1 else 1.0 - lx
                sign_y = 1.0 if corner // 2 == 1 else -1.0
                sign_x = 1.0 if corner % 2 == 1 else -1.0
                address = image + (row * width + col) * CHANNELS
                lanes = ok[:, None] & channel_ok[None, :]
                pixel_value = tl.load(input_ptr + address[:, None] + channel[None, :], mask=lanes, other=0.0)
                pixel_value = pixel_value.to(tl.float32)
                value += (fy * fx)[:, None] * pixel_value
                d_value_dy += (sign_y * fx)[:, None] * pixel_value
                d_value_dx += (sign_x * fy)[:, None] * pixel_value
                tl.atomic_add(
                    grad_input_ptr + address[:, None] + channel[None, :],
                    tl.where(lanes, (weight * fy * fx)[:, None] * upstream, 0.0), mask=lanes,
                )
            scaled = offset_scale * weight
            tl.store(grad_mask_ptr + point, tl.sum(upstream * value, axis=1).to(grad_mask_ptr.dtype.element_ty),
                     mask=in_range)
            grad_dx = scaled * tl.sum(upstream * d_value_dx, axis=1)
            grad_dy = scaled * tl.sum(upstream * d_value_dy, axis=1)
            tl.store(grad_offset_ptr + 2 * point, grad_dx.to(grad_offset_ptr.dtype.element_ty), mask=in_range)
            tl.store(grad_offset_ptr + 2 * point + 1, grad_dy.to(grad_offset_ptr.dtype.element_ty), mask=in_range)


# Launch: tile shape, warps and grid. Tiles are (pixel block, group) with the group fastest.

def launch_config(group_channels: int, backward: bool) -> dict:
    """Tile shape and warps; chosen, without a GPU, so that ptxas reports no register spills for sm_90
    (tests/test_triton_kernel.py compiles every dtype and InternImage's group widths to check).

    Channels pad to a power of two; a tile holds about 2048 elements forward and
    1024 backward (four live float32 tiles per point there instead of one).
    Four warps keep a 16-channel forward tile at about 100 registers; wider
    tiles and the backward need eight to stay spill-free.
    """
    block_channels = triton.next_power_of_2(group_channels)
    budget = 1024 if backward else 2048
    warps = 8 if backward or block_channels > 16 else 4
    return dict(BLOCK_PIXELS=max(4, min(128, budget // block_channels)), BLOCK_CHANNELS=block_channels,
                num_warps=warps)


def _programs(tiles: int, device) -> int:
    if device.type == "npu":
        # triton-ascend binds a program to a physical vector core.
        properties = triton.runtime.driver.active.utils.get_device_properties(torch.npu.current_device())
        return max(1, min(tiles, int(properties["num_vectorcore"])))
    return max(1, tiles)


def _launch(kernel, tensors, input, offset, params, backward):
    (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
     group, group_channels, offset_scale, remove_center) = params
    batch, height, width, channels = input.shape
    _, out_h, out_w, _ = offset.shape
    pixels = batch * out_h * out_w
    config = launch_config(group_channels, backward)
    tiles = triton.cdiv(pixels, config["BLOCK_PIXELS"]) * group
    kernel[(_programs(tiles, input.device),)](
        *tensors, pixels, height, width, out_h, out_w, float(offset_scale), tiles,
        GROUP=group, GROUP_CHANNELS=group_channels, CHANNELS=channels,
        POINTS=kernel_h * kernel_w - int(remove_center),
        KERNEL_H=kernel_h, KERNEL_W=kernel_w, STRIDE_H=stride_h, STRIDE_W=stride_w,
        PAD_H=pad_h, PAD_W=pad_w, DILATION_H=dilation_h, DILATION_W=dilation_w,
        REMOVE_CENTER=int(remove_center), **config,
    )


def _stored(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels write results in. Triton 3.9's interpreter truncates float32 -> bfloat16
    where GPUs round to nearest, so interpreted bfloat16 results are written as float32 and rounded by torch."""
    if dtype == torch.bfloat16 and interpreted():
        return torch.float32
    return dtype


def forward(input, offset, mask, params):
    """params: the 12 DCNv3 scalars in InternImage's order (without im2col_step)."""
    input, offset, mask = input.contiguous(), offset.contiguous(), mask.contiguous()
    output = torch.empty(*offset.shape[:3], input.shape[3], dtype=_stored(input.dtype), device=input.device)
    _launch(dcnv3_forward_kernel, (input, offset, mask, output), input, offset, params, backward=False)
    return output.to(input.dtype)


def backward(grad_output, input, offset, mask, params):
    input, offset, mask = input.contiguous(), offset.contiguous(), mask.contiguous()
    grad_output = grad_output.contiguous()
    grad_input = torch.zeros(input.shape, dtype=torch.float32, device=input.device)
    grad_offset = torch.empty_like(offset, dtype=_stored(offset.dtype))
    grad_mask = torch.empty_like(mask, dtype=_stored(mask.dtype))
    tensors = (input, offset, mask, grad_output, grad_input, grad_offset, grad_mask)
    _launch(dcnv3_backward_kernel, tensors, input, offset, params, backward=True)
    return grad_input.to(input.dtype), grad_offset.to(offset.dtype), grad_mask.to(mask.dtype)
