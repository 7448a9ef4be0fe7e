"""Pure-PyTorch models of two DCNv2 kernels' documented semantics, for tests only.

They stand in for kernels this machine cannot run (torchvision's compiled ops,
torch_npu's DeformableOffsets), so that the DCNv3 -> DCNv2 mapping in
impls/dcnv2_mapping.py can be proven on CPU against the reference. Each
parses its kernel's argument layout (../shared/DCNv3.md, last section) and
hands the shared modulated deformable convolution below. Autograd gives the
gradients.
"""

from __future__ import annotations

import torch


def _bilinear(image: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """image [N, G, Cg, H, W] sampled at y, x [N, G, K, Ho, Wo] -> [N, G, Cg, K, Ho, Wo]; zero outside.

    DCNv2's rule: a point on or beyond the -1 / H / W lines contributes zero,
    and so does every corner outside the image.
    """
    batch, groups, channels, height, width = image.shape
    inside = (y > -1) & (x > -1) & (y < height) & (x < width)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    flat = image.reshape(batch, groups, channels, height * width)
    total = 0
    for row, col, weight in (
        (y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx),
    ):
        valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
        index = torch.where(valid, row * width + col, torch.zeros_like(row)).long()
        gathered = torch.gather(flat, 3, index.flatten(2)[:, :, None].expand(-1, -1, channels, -1))
        gathered = gathered.reshape(batch, groups, channels, *y.shape[2:])
        total = total + torch.where(valid, weight, torch.zeros_like(weight))[:, :, None] * gathered
    return total


def modulated_deform_conv(input, dx, dy, mask, weight, stride, padding, dilation):
    """input [N, C, H, W]; dx, dy, mask [N, dg, K, Ho, Wo] with K row-major; weight [Cout, C/groups, kh, kw].

    stride, dilation: (h, w); padding: (top, left). Point k = j*kernel_w + i samples
    y = ho*stride_h - top + j*dilation_h + dy, x = wo*stride_w - left + i*dilation_w + dx.
    """
    batch, channels, height, width = input.shape
    _, deformable_groups, points, out_h, out_w = dx.shape
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    assert points == kernel_h * kernel_w, "offset holds one pair per kernel position"
    on = dict(dtype=dx.dtype, device=dx.device)
    j = torch.arange(kernel_h, **on).repeat_interleave(kernel_w)
    i = torch.arange(kernel_w, **on).repeat(kernel_h)
    ho = torch.arange(out_h, **on) * stride[0] - padding[0]
    wo = torch.arange(out_w, **on) * stride[1] - padding[1]
    y = ho[None, :, None] + (j * dilation[0])[:, None, None] + dy
    x = wo[None, None, :] + (i * dilation[1])[:, None, None] + dx
    image = input.reshape(batch, deformable_groups, channels // deformable_groups, height, width)
    columns = _bilinear(image, y, x) * mask[:, :, None]
    groups = channels // group_in
    columns = columns.reshape(batch, groups, group_in, points, out_h, out_w)
    kernel = weight.reshape(groups, out_channels // groups, group_in, points)
    output = torch.einsum("ngckhw,gock->ngohw", columns, kernel)
    return output.reshape(batch, out_channels, out_h, out_w), columns.reshape(batch, channels, points, out_h, out_w)


def torchvision_deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                              dilation=(1, 1), mask=None):
    """torchvision.ops.deform_conv2d: offset [N, 2*dg*K, Ho, Wo] of (dy, dx) pairs; mask [N, dg*K, Ho, Wo]."""
    batch, _, out_h, out_w = offset.shape
    points = weight.shape[2] * weight.shape[3]
    pairs = offset.reshape(batch, offset.shape[1] // (2 * points), points, 2, out_h, out_w)
    output, _ = modulated_deform_conv(
        input, pairs[:, :, :, 1], pairs[:, :, :, 0], mask.reshape(pairs[:, :, :, 0].shape), weight,
        stride, padding, dilation,
    )
    return output if bias is None else output + bias[:, None, None]


def npu_deformable_conv2d(input, weight, offset, bias, kernel_size, stride, padding, dilation=(1, 1, 1, 1),
                          groups=1, deformable_groups=1, modulated=True):
    """torch_npu.npu_deformable_conv2d -> (output, sampled).

    offset [N, 3*dg*K, Ho, Wo] = [all dx | all dy | all masks], each indexed g*K + k;
    kernel_size [kh, kw]; stride and dilation [1, 1, h, w]; padding [top, bottom, left, right];
    sampled [N, C, Ho*kh, Wo*kw] with the mask applied.
    """
    assert modulated, "DCNv3 needs the modulated form"
    assert list(kernel_size) == list(weight.shape[2:]), "kernel_size is [kh, kw], as the weight"
    assert groups == input.shape[1] // weight.shape[1]
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel_size
    dx, dy, mask = (block.reshape(batch, deformable_groups, kernel_h * kernel_w, out_h, out_w)
                    for block in offset.chunk(3, dim=1))
    output, columns = modulated_deform_conv(
        input, dx, dy, mask, weight, stride[2:], (padding[0], padding[2]), dilation[2:],
    )
    channels = input.shape[1]
    sampled = columns.reshape(batch, channels, kernel_h, kernel_w, out_h, out_w)
    sampled = sampled.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, out_h * kernel_h, out_w * kernel_w)
    return (output if bias is None else output + bias[:, None, None]), sampled
