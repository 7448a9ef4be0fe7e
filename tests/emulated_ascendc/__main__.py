"""`python -m emulated_ascendc build-library | counts` (tests/ and the repository root on sys.path).

build-library: build the emulated NPU's Ascend C library and print its path, for DCNV3_ASCENDC_LIBRARY
(nox -s npu-emulated). counts: what the kernel does per output pixel (all groups) and per sampling point
on each InternImage-T shape, forward and backward, under the 910B3 plan: emulated counts, not time.
"""

import sys

import pandas as pd
import torch

import emulated_ascendc as emulated
from bench.cases import make_inputs
from bench.shapes import SUITES


def per_pixel_counts() -> pd.DataFrame:
    driver = emulated.Driver(emulated.build_driver())
    rows = []
    for shape in SUITES["internimage"]:
        if not shape.name.startswith("T-"):
            continue
        input, offset, mask, grad_output = (t.numpy() for t in make_inputs(shape, torch.float32, torch.device("cpu"),
                                                                            torch.Generator().manual_seed(0)))
        pixels = offset.shape[0] * offset.shape[1] * offset.shape[2]
        points = pixels * shape.params.group * shape.params.points
        for mode, tensors, shapes in (("forward", [input, offset, mask], [grad_output.shape]),
                                      ("backward", [input, offset, mask, grad_output],
                                       [input.shape, offset.shape, mask.shape])):
            _, counts = driver.run(mode == "backward", shape.params, tensors, shapes, emulated.DEVICE_910B3)
            rows.append({"shape": shape.name, "mode": mode,
                         "dma_per_pixel": (counts["copies_in"] + counts["copies_out"]) / pixels,
                         "dma_per_point": (counts["copies_in"] + counts["copies_out"]) / points,
                         "bytes_per_pixel": (counts["bytes_in"] + counts["bytes_out"]) / pixels,
                         "barriers_per_pixel": counts["barriers"] / pixels,
                         "barriers_per_point": counts["barriers"] / points,
                         "vector_ops_per_pixel": counts["vector_ops"] / pixels,
                         "scalar_ub_per_pixel": counts["scalar_ub"] / pixels})
    return pd.DataFrame(rows)


if sys.argv[1:] == ["build-library"]:
    print(emulated.build_library())
elif sys.argv[1:] == ["counts"]:
    print(per_pixel_counts().to_markdown(index=False, floatfmt=".1f"))
else:
    sys.exit("usage: python -m emulated_ascendc build-library | counts")
