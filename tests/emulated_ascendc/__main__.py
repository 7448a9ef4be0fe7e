"""`python -m emulated_ascendc build-library | counts [--out DIR]` (tests/ and the repository root on sys.path).

build-library: build the emulated NPU's Ascend C library and print its path, for DCNV3_ASCENDC_LIBRARY
(nox -s npu-emulated). counts: what the kernel does per output pixel (all groups) and per sampling point
on each InternImage-T shape, forward and backward, under the 910B3 plan, beside the bytes-moved model:
emulated counts, not time. With --out DIR, also DIR/ascendc-counts.csv, which `python -m reports DIR`
puts in the run's summary.
"""

import argparse
from pathlib import Path

import pandas as pd
import torch

import emulated_ascendc as emulated
from bench.cases import make_inputs
from bench.shapes import SUITES
from bench.traffic import bytes_moved


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
            copies = counts["copies_in"] + counts["copies_out"]
            rows.append({"shape": shape.name, "mode": mode,
                         "dma_per_point": copies / points,
                         "dma_per_pixel": copies / pixels,
                         "bytes_per_pixel": (counts["bytes_in"] + counts["bytes_out"]) / pixels,
                         "model_bytes_per_pixel": bytes_moved(shape, mode, torch.float32) / pixels,
                         "barriers_per_point": counts["barriers"] / points,
                         "flag_pairs_per_point": counts["flags"] / points,
                         "vector_ops_per_pixel": counts["vector_ops"] / pixels,
                         "scalar_ub_per_pixel": counts["scalar_ub"] / pixels})
    return pd.DataFrame(rows)


parser = argparse.ArgumentParser(prog="python -m emulated_ascendc")
parser.add_argument("command", choices=["build-library", "counts"])
parser.add_argument("--out", type=Path, metavar="DIR", help="counts: also write DIR/ascendc-counts.csv")
arguments = parser.parse_args()
if arguments.command == "build-library":
    print(emulated.build_library())
else:
    table = per_pixel_counts()
    if arguments.out is not None:
        arguments.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(arguments.out / "ascendc-counts.csv", index=False)
    print(table.to_markdown(index=False, floatfmt=".2f"))
