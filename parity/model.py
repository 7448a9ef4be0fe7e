"""Model-level parity: a whole InternImage backbone, output and every gradient, per implementation.

    python -m parity --model internimage-t [--size 224] [--batch 1] [--impl ...] [--dtype ...]
                     [--seed 0] [--out DIR]

The same seeded backbone (impls/internimage.py) runs once in float64 with the
`grid_sample` core, the truth, and then for the baseline (`grid_sample`) and
each implementation in each dtype: the four stage outputs, the gradient of the
input image and of every parameter, each compared with the truth as a relative
L2 error ||x - truth|| / ||truth||. Tensors are grouped into parameter
families (`dcn.offset`, `mlp`, `stem`, ...). A tensor passes when its error is
at most `factor` times the baseline's worst error in its family at the same
dtype, or the dtype's floor if that is larger: parity/model_thresholds.toml,
with the measurements behind both. Writes
DIR/model-parity.csv (one row per implementation, dtype and tensor) and
DIR/model-parity.md, and exits 1 when any tensor exceeds its family's bound.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import impls
from impls import devices, internimage
from impls.cli import dtype_name
from parity.summary import publish

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

THRESHOLDS = Path(__file__).with_name("model_thresholds.toml")
TRUTH_IMPL = "grid_sample"  # in float64; the baseline's own float64 rows are therefore exactly 0
SUMMARY_KEYS = ["implementation", "device", "dtype", "family"]
# First match wins: a parameter's name (InternImage's) -> its family.
FAMILIES = [
    (r"^output\.", "output"),
    (r"^input$", "input"),
    (r"\.dcn\.offset\.", "dcn.offset"),
    (r"\.dcn\.mask\.", "dcn.mask"),
    (r"\.dcn\.dw_conv\.", "dcn.dw_conv"),
    (r"\.dcn\.(input|output)_proj\.", "dcn.projections"),
    (r"\.dcn\.center_feature_scale", "dcn.center_feature_scale"),
    (r"\.mlp\.", "mlp"),
    (r"\.gamma[12]$", "layer_scale"),
    (r"\.blocks\.\d+\.(norm|res_post_norm)[12]\.", "block_norms"),
    (r"^levels\.\d+\.(norm|post_norms)\.", "stage_norms"),
    (r"\.downsample\.", "downsample"),
    (r"^patch_embed\.", "stem"),
]


def family(tensor: str) -> str:
    for pattern, name in FAMILIES:
        if re.search(pattern, tensor):
            return name
    raise ValueError(f"no parameter family for {tensor!r}")


def rule() -> dict:
    with open(THRESHOLDS, "rb") as handle:
        return tomllib.load(handle)


def quantities(model: torch.nn.Module, image: torch.Tensor, cotangents: list[torch.Tensor],
               outputs_only: bool = False) -> dict[str, torch.Tensor]:
    """The four stage outputs and the gradients of the image and every parameter (the outputs alone with
    outputs_only), float64 on the host."""
    if outputs_only:
        with torch.no_grad():
            return {f"output.s{stage + 1}": out.cpu().to(torch.float64) for stage, out in enumerate(model(image))}
    image = image.detach().requires_grad_()
    named = list(model.named_parameters())
    outputs = model(image)
    grads = torch.autograd.grad(outputs, [image] + [p for _, p in named], cotangents)
    result = {f"output.s{stage + 1}": out for stage, out in enumerate(outputs)}
    result["input"] = grads[0]
    result.update({name: grad for (name, _), grad in zip(named, grads[1:])})
    # To the host first: on an NPU a cast to float64 gives float32.
    return {name: t.detach().cpu().to(torch.float64) for name, t in result.items()}


def relative_l2(actual: torch.Tensor, truth: torch.Tensor) -> float:
    error = (actual - truth).norm().item()
    scale = truth.norm().item()
    value = error / scale if scale > 0 else error
    return value if value == value else float("inf")  # NaN fails


def problem(config: internimage.Config, size: int, batch: int, seed: int):
    """(the truth model, image, cotangents of the four outputs), all float64 on the host, seeded."""
    truth_model = internimage.build(config, impl=TRUTH_IMPL, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    image = torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        shapes = [out.shape for out in truth_model(image)]
    cotangents = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    return truth_model, image, cotangents


def run(implementations, dtypes, device, config: internimage.Config, size: int, batch: int, seed: int,
        progress=None) -> pd.DataFrame:
    """Rows for the baseline and every implementation x dtype, each tensor against the float64 truth (the
    stage outputs alone for an implementation with no backward);
    a family's bound is `factor` x the baseline's worst error in it at the same dtype, at least the
    dtype's floor (flash-attention's rule, per family)."""
    truth_model, image, cotangents = problem(config, size, batch, seed)
    truth = quantities(truth_model, image, cotangents)
    base = impls.baseline()
    rows = []
    for impl in [base] + [i for i in implementations if i.name != base.name]:
        for dtype in dtypes:
            if not impl.supports(dtype):
                continue
            model = copy.deepcopy(truth_model).set_impl(impl.name).to(device=device, dtype=dtype)
            started = time.perf_counter()
            try:
                actual = quantities(model, image.to(device, dtype), [c.to(device, dtype) for c in cotangents],
                                    outputs_only=impl.forward_only)
                error = ""
            except Exception as exception:  # a kernel that raises fails its rows; the gate goes on
                actual, error = None, devices.describe(exception)
            seconds = time.perf_counter() - started
            rows += [{
                "model": config.name, "size": size, "batch": batch, "seed": seed, "implementation": impl.name,
                "baseline": impl.name == base.name, "device": device.type, "dtype": dtype_name(dtype),
                "tensor": tensor, "family": family(tensor),
                "rel_l2": float("inf") if actual is None else relative_l2(actual[tensor], reference),
                "seconds": seconds, "error": error,
            } for tensor, reference in truth.items() if not impl.forward_only or tensor.startswith("output.")]
            if progress:
                progress(f"{impl.name} {dtype_name(dtype)}: {seconds:.1f} s" + (f", raised {error}" if error else ""))
    results = pd.DataFrame(rows)
    bounds = rule()
    yardstick = (results[results["baseline"]].groupby(["dtype", "family"])["rel_l2"].max()
                 .rename("baseline_rel_l2").reset_index())
    results = results.merge(yardstick, on=["dtype", "family"], how="left")
    floor = results["dtype"].map(bounds["floor"])
    # A baseline that raised or gave NaN measures nothing: its bound is NaN, and every row of it fails.
    yardstick = results["baseline_rel_l2"].where(results["baseline_rel_l2"] < float("inf"))
    results["threshold"] = (bounds["factor"] * yardstick).clip(lower=floor)
    results["pass"] = results["rel_l2"] <= results["threshold"]
    return results


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per implementation, dtype and family: the tensors, the worst and median error, bound, margin."""
    grouped = results.groupby(SUMMARY_KEYS, sort=False)
    summary = grouped.agg(
        tensors=("rel_l2", "size"), worst_rel_l2=("rel_l2", "max"), median_rel_l2=("rel_l2", "median"),
        threshold=("threshold", "first"), failed=("pass", lambda s: int((~s).sum())),
    ).reset_index()
    worst = results.loc[grouped["rel_l2"].idxmax(), SUMMARY_KEYS + ["tensor"]].rename(columns={"tensor": "worst_tensor"})
    summary = summary.merge(worst, on=SUMMARY_KEYS)
    summary["margin"] = summary["threshold"] / summary["worst_rel_l2"].where(summary["worst_rel_l2"] > 0)
    summary["pass"] = summary["failed"] == 0
    return summary[SUMMARY_KEYS + ["tensors", "median_rel_l2", "worst_rel_l2", "threshold", "margin", "pass",
                                   "worst_tensor"]]


SPREAD_NOTE = (
    "Why correct kernels differ: the bilinear offset gradient jumps wherever a sampling coordinate crosses "
    "an integer, and lower-precision position arithmetic moves a few of a model's points across one; those "
    "points' offset gradients change by O(1) and spread through the offset and mask projections, the "
    "depthwise convolutions before them and, through the input gradient, everything upstream. So in float32 "
    "the dcn.offset and dcn.dw_conv families of correct kernels disagree by about 1e-3 to 1e-2 (InternImage-T "
    "at 224) while the outputs agree to about 1e-6; a wrong kernel is off by O(1) in dcn.offset and dcn.mask."
)


def spread(summary: pd.DataFrame) -> pd.DataFrame:
    """Families down, implementation and dtype across: each cell the worst relative L2 error."""
    labelled = summary.assign(column=summary["implementation"] + " " + summary["dtype"])
    table = labelled.pivot(index="family", columns="column", values="worst_rel_l2")
    rows, columns = dict.fromkeys(labelled["family"]), dict.fromkeys(labelled["column"])
    return table.reindex(index=list(rows), columns=list(columns)).reset_index()


def report(summary: pd.DataFrame, skipped: dict[str, str], header: str) -> str:
    lines = [header, "", "## Worst relative L2 error per parameter family", "",
             spread(summary).to_markdown(index=False, floatfmt=".1e"), "", SPREAD_NOTE, "",
             "## Per implementation, dtype and family", "", summary.to_markdown(index=False, floatfmt=".2e")]
    if skipped:
        lines += ["", "Not run:", ""] + [f"- {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def main(args, implementations, skipped, dtypes, device) -> int:
    """`python -m parity --model ...` once the gate has parsed the options (args.model is the Config)
    and chosen the implementations and dtypes."""
    config = args.model
    size = args.size or config.classification_size

    def reporter(line: str) -> None:
        print(f"model parity on {device}: {line}", file=sys.stderr)

    started = time.perf_counter()
    results = run(implementations, dtypes, device, config, size, args.batch, args.seed, reporter)
    summary = summarise(results)
    failed = int((~results["pass"]).sum())
    verdict = "PASS" if failed == 0 else f"FAIL: {failed} of {len(results)} tensors over their bound"
    header = (
        f"# Model parity: InternImage-{config.name} backbone at {size}x{size}, batch {args.batch}, on {device}\n\n"
        f"Relative L2 error of each stage output and gradient against the same model in float64 with the "
        f"{TRUTH_IMPL} core (seed {args.seed}), per parameter family; a family's bound is "
        f"{rule()['factor']:g}x the same-dtype {impls.baseline().name} run's worst error in it, at least the "
        f"dtype's floor (parity/model_thresholds.toml). "
        f"torch {torch.__version__}, {time.perf_counter() - started:.1f} s. {verdict}."
    )
    return publish(report(summary, skipped, header), results, args.out, "model-parity", failed)
