"""Compile the Triton kernels (DCNv3's and MSDA's) for an NVIDIA target without a GPU and print ptxas's
resource usage as JSON.

    python tests/triton_resources.py   (TRITON_INTERPRET must be unset: the real compiler is wanted)

Triton's wheel carries ptxas and cuobjdump, so this runs on a CPU-only machine.
Each line of output: {"kernel", "dtype", "group_channels", "points", "registers", "spill_bytes"}, where
an MSDA kernel's kernel is "msda_forward" or "msda_backward" and its group_channels is D.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from impls.msda import triton_kernels as msda_kernels
from impls.triton_kernel import kernels

H200 = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# (group_channels, kernel, remove_center): InternImage's widths, a wide odd one and a 5x5 kernel.
CONFIGS = [(16, 3, False), (32, 3, False), (64, 3, False), (71, 3, True), (8, 5, True)]
DTYPES = ["fp32", "fp16", "bf16"]
# MSDA: Deformable DETR's 8 heads, 4 levels and 4 points, at the head widths its models use and a narrow one.
MSDA_CHANNELS, MSDA_CONSTANTS = (8, 16, 32, 64), dict(HEADS=8, LEVELS=4, POINTS=4)


def compile_kernel(kernel, backward: bool, dtype: str, group_channels: int, kernel_size: int, remove_center: bool):
    config = kernels.launch_config(group_channels, backward)
    warps = config.pop("num_warps")
    constexprs = dict(
        GROUP=2, GROUP_CHANNELS=group_channels, CHANNELS=2 * group_channels,
        POINTS=kernel_size * kernel_size - int(remove_center), KERNEL_H=kernel_size, KERNEL_W=kernel_size,
        STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DILATION_H=1, DILATION_W=1,
        REMOVE_CENTER=int(remove_center), **config,
    )
    return _compile(kernel, dtype, constexprs, warps)


def compile_msda_kernel(kernel, backward: bool, dtype: str, channels: int):
    config = kernels.launch_config(channels, backward)
    warps = config.pop("num_warps")
    constexprs = dict(CHANNELS=channels, BLOCK_ROWS=config.pop("BLOCK_PIXELS"), **config, **MSDA_CONSTANTS)
    return _compile(kernel, dtype, constexprs, warps)


def _compile(kernel, dtype: str, constexprs: dict, warps: int):
    """kernel for the H200 with data pointers of dtype; the float32 gradient buffers its atomics add into,
    int64 index tensors, and int32 sizes."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {
        name: "constexpr" if name in constexprs
        else "*fp32" if name in ("grad_input_ptr", "grad_value_ptr")
        else "*i64" if name in ("shapes_ptr", "starts_ptr")
        else f"*{dtype}" if name.endswith("_ptr")
        else "fp32" if name == "offset_scale"
        else "i32"
        for name in names
    }
    # The JIT marks a pointer to a 16-byte aligned allocation (every torch tensor's) as divisible by 16, which
    # lets it vectorise; without the mark this compiles other code than a launch does (Triton 3.6 failed to
    # compile both backward kernels at narrow widths only with it).
    aligned = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(names)
               if name.endswith("_ptr") and name not in constexprs}
    source = ASTSource(fn=kernel, signature=signature, attrs=aligned,
                       constexprs={(names.index(name),): value for name, value in constexprs.items()})
    return triton.compile(source, target=H200, options={"num_warps": warps})


def resource_usage(cubin: bytes) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", file.name],
                                capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", report).group(1))
    spills = int(re.search(r"STACK:(\d+)", report).group(1)) + int(re.search(r"LOCAL:(\d+)", report).group(1))
    return registers, spills


# Exit status when this Triton's ahead-of-time API is not the one written against (3.9).
UNSUPPORTED = 3


def main() -> int:
    try:
        compile_kernel(kernels.dcnv3_forward_kernel, False, "fp32", *CONFIGS[0])
    except (TypeError, AttributeError, KeyError) as error:
        print(f"triton {triton.__version__}: ahead-of-time compile API differs: {error!r}", file=sys.stderr)
        return UNSUPPORTED
    for kernel, backward in ((kernels.dcnv3_forward_kernel, False), (kernels.dcnv3_backward_kernel, True)):
        for dtype in DTYPES:
            for group_channels, kernel_size, remove_center in CONFIGS:
                compiled = compile_kernel(kernel, backward, dtype, group_channels, kernel_size, remove_center)
                registers, spills = resource_usage(compiled.asm["cubin"])
                print(json.dumps(dict(
                    kernel="backward" if backward else "forward", dtype=dtype, group_channels=group_channels,
                    points=kernel_size * kernel_size - int(remove_center), registers=registers, spill_bytes=spills,
                )))
    for kernel, backward in ((msda_kernels.msda_forward_kernel, False), (msda_kernels.msda_backward_kernel, True)):
        for dtype in DTYPES:
            for channels in MSDA_CHANNELS:
                registers, spills = resource_usage(compile_msda_kernel(kernel, backward, dtype, channels).asm["cubin"])
                print(json.dumps(dict(
                    kernel="msda_backward" if backward else "msda_forward", dtype=dtype, group_channels=channels,
                    points=MSDA_CONSTANTS["LEVELS"] * MSDA_CONSTANTS["POINTS"], registers=registers,
                    spill_bytes=spills,
                )))
    return 0


if __name__ == "__main__":
    sys.exit(main())
