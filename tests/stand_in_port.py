"""A stand-in for a user's port, in InternImage's calling convention, for `--impl-module` runs
(`--impl-module stand_in_port:DCNv3Function` with tests/ on PYTHONPATH): the grid_sample fallback
behind an autograd Function's `apply(input, offset, mask, kernel_h, ..., im2col_step, remove_center)`."""

import torch

import impls


class DCNv3Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, *scalars):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (input, offset, mask)]
            output = impls.dcnv3(*leaves, *scalars, impl="grid_sample")
        ctx.graph = (leaves, output)
        return output.detach()

    @staticmethod
    def backward(ctx, grad_output):
        leaves, output = ctx.graph
        return (*torch.autograd.grad(output, leaves, grad_output, retain_graph=True), *[None] * 13)
