"""The ONNX round trip: a whole backbone exported with the harness's operator, run by ONNX Runtime.

    python -m parity --export onnx [--model internimage-mini] [--size S] [--batch B] [--seed 0] [--out DIR]

The seeded backbone (impls/internimage.py, float32, `impl="auto"`) is exported with
`torch.onnx.export(..., dynamo=True)` (impls/onnx_export.py). The file must hold one standard
`DeformConv` node per DCNv3 layer, only ops of the standard domain, and no other sampling op
(GridSample). ONNX Runtime's CPU provider then runs it, and each of the four stage outputs must match
the same model in PyTorch in float32 (relative L2 error; the bound and its measurement are in
parity/model_thresholds.toml, [export]). Writes DIR/model.onnx, DIR/export-parity.csv and
DIR/export-parity.md; exits 1 when the structure or any stage output is off.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from impls import internimage, onnx_export
from parity.model import relative_l2, rule
from parity.summary import publish

FORMATS = ("onnx",)
# Ops that sample an image at offsets: a deformable layer exported any other way than as DeformConv.
OTHER_SAMPLING_OPS = {"GridSample"}


def structure_faults(proto, layers: int) -> list[str]:
    """What keeps the graph from being standard ONNX with one DeformConv per DCNv3 layer."""
    nodes = list(proto.graph.node)
    faults = []
    deform = sum(node.op_type == "DeformConv" for node in nodes)
    if deform != layers:
        faults.append(f"{deform} DeformConv nodes for {layers} DCNv3 layers")
    custom = sorted({f"{node.domain}::{node.op_type}" for node in nodes if node.domain not in ("", "ai.onnx")})
    if custom:
        faults.append(f"ops outside the standard domain: {', '.join(custom)}")
    sampling = sorted({node.op_type for node in nodes} & OTHER_SAMPLING_OPS)
    if sampling:
        faults.append(f"other sampling ops in the graph: {', '.join(sampling)}")
    return faults


def main(args) -> int:
    """`python -m parity --export onnx` once the gate has parsed the options (args.model is the Config)."""
    import onnxruntime

    config = args.model
    size = args.size or config.classification_size
    started = time.perf_counter()
    model = internimage.build(config, seed=args.seed, dtype=torch.float32)
    image = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        expected = model(image)
    proto = onnx_export.export_quietly(model, (image,))
    layers = len(internimage.dcnv3_layers(model))
    faults = structure_faults(proto, layers)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    bound = rule()["export"]["float32"]
    results = pd.DataFrame([{
        "model": config.name, "size": size, "batch": args.batch, "seed": args.seed, "format": args.export,
        "runtime": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)", "tensor": f"output.s{stage + 1}",
        "rel_l2": relative_l2(torch.from_numpy(ran).double(), torch_output.double()),
        "max_abs_diff": (torch.from_numpy(ran) - torch_output).abs().max().item(), "bound": bound,
    } for stage, (ran, torch_output) in enumerate(zip(actual, expected))])
    results["pass"] = (results["rel_l2"] <= bound) & (not faults)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "model.onnx").write_bytes(proto.SerializeToString())
    failed = int((~results["pass"]).sum())
    verdict = "PASS" if failed == 0 else "FAIL: " + "; ".join(faults or [f"{failed} stage outputs over {bound:g}"])
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    header = (
        f"# ONNX round trip: InternImage-{config.name} backbone at {size}x{size}, batch {args.batch}, float32\n\n"
        f"torch.onnx.export (dynamo, opsets {opsets}): {len(proto.graph.node)} nodes, "
        f"{sum(n.op_type == 'DeformConv' for n in proto.graph.node)} DeformConv for {layers} DCNv3 layers; run "
        f"by ONNX Runtime's CPU provider against the same model in PyTorch (relative L2 bound {bound:g}, "
        f"parity/model_thresholds.toml). torch {torch.__version__}, {time.perf_counter() - started:.1f} s. {verdict}."
    )
    report = header + "\n\n" + results.drop(columns=["model", "size", "batch", "seed"]).to_markdown(
        index=False, floatfmt=".2e") + "\n"
    return publish(report, results, args.out, "export-parity", failed)
