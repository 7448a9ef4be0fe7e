"""The parity gate: a seeded sweep of the parity strategies against the reference.

    python -m parity --device cpu [--op dcnv3|msda] [--impl NAME ...] [--dtype ...] [--examples K]
                     [--seed S] [--out DIR] [--thresholds FILE] [--timeout S] [--no-isolate]
                     [--devices all|N|0,3,5]   (one pytest-xdist worker per device; parity/spread.py)
                     [--impl-module package.module:Name ...]   (your own kernel; impls/external.py)
    python -m parity --model internimage-t [--size 224] [--batch 1] ...   (a whole backbone; parity/model.py)
    python -m parity --export onnx [--model internimage-mini] ...   (the ONNX round trip; parity/export.py)

Writes DIR/parity.csv (one row per implementation, dtype, quantity and case:
its errors, the baseline's on the same case and the bounds they set) and
DIR/parity.md, prints per implementation, dtype and quantity the worst case,
the tightest margin and the run-to-run spread, and exits 1 when any row
exceeds its per-case bound, 0 when all pass, 2 on bad usage. Each
implementation runs in a child process (parity/isolate.py): one that crashes
or hangs fails the case it was on, and the run goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import impls
from impls import devices, external, internimage
from impls.cli import DTYPES, UsageError, dtype_name
from parity import model as model_parity
from parity import export, operators, runner, spread
from parity.summary import markdown, publish, summarise
from parity.thresholds import DEFAULT_PATH, Thresholds

# A whole model in float16 is not what InternImage trains or deploys in; --dtype float16 asks for it.
MODEL_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, npu, or auto (best present; default)")
    parser.add_argument("--op", choices=sorted(operators.OPERATORS), default="dcnv3",
                        help="the operator: dcnv3 (default) or msda (multi-scale deformable attention)")
    parser.add_argument("--impl", nargs="+", metavar="NAME", help="implementations to check (default: all available)")
    external.add_option(parser.add_argument, "check")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), help="dtypes (default: all each implementation supports)")
    parser.add_argument("--examples", type=int, default=200, help="drawn cases after the regression cases (default 200)")
    parser.add_argument("--compiled-examples", type=int, default=2,
                        help="drawn cases for implementations that compile per shape or run in an interpreter "
                             "(default 2; seconds each)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed of the sweep (default 0)")
    parser.add_argument("--out", type=Path, help="folder for parity.csv and parity.md")
    parser.add_argument("--thresholds", type=Path, default=DEFAULT_PATH, help="thresholds TOML (default parity/thresholds.toml)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every implementation in this process (debugging: a crash then ends the run)")
    parser.add_argument("--devices", metavar="all|N|0,3,5",
                        help="spread the sweep over devices of --device's type, one pytest-xdist worker each "
                             "(parity/spread.py): all, the first N, or these indices; on cpu, N workers sharing "
                             "the cores")
    parser.add_argument("--timeout", type=float, default=runner.DEFAULT_TIMEOUT,
                        help=f"seconds an isolated implementation may spend on one case (default {runner.DEFAULT_TIMEOUT:g})")
    model = parser.add_argument_group("model-level parity (parity/model.py)")
    model.add_argument("--model", metavar="internimage-NAME",
                       help=f"check a whole backbone instead: internimage-{{{','.join(c.lower() for c in internimage.CONFIGS)}}}")
    model.add_argument("--size", type=int, help="image side (default: the model's classification size)")
    model.add_argument("--batch", type=int, default=1, help="images (default 1)")
    model.add_argument("--export", choices=export.FORMATS,
                       help="export the backbone (default internimage-mini) and check ONNX Runtime's run of the "
                            "file against PyTorch instead (parity/export.py)")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error("--examples must be >= 0")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    if args.op != "dcnv3" and (args.model is not None or args.export is not None):
        parser.error("--model and --export are InternImage's (DCNv3): not with --op msda")
    if args.devices is not None and (args.model is not None or ":" in args.device):
        parser.error("--devices spreads the case sweep of one device type: not with --model or an index in --device")
    if args.export is not None:
        if args.model is None:
            args.model = "internimage-mini"
        reason = impls.get("onnxruntime").unavailable_reason("cpu")
        if reason is not None:
            parser.error(f"--export onnx needs ONNX Runtime: {reason} (pip install 'dcnv3-harness[deploy]')")
    if args.model is not None:
        try:
            args.model = internimage.named(args.model.removeprefix("internimage-"))
        except ValueError as error:
            parser.error(f"--model: {error}")
        if args.size is not None and args.size < 32:
            parser.error("--size must be >= 32 (four stride-2 stages and a stride-2 stem)")
        if args.batch < 1:
            parser.error("--batch must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export is not None:
        return export.main(args)
    try:
        device = devices.resolve(args.device)
        workers = None if args.devices is None else devices.worker_devices(device.type, args.devices)
        external.load(args.impl_module, args.op)
        implementations, skipped = runner.select_implementations(args.impl, device, skip_interpreted=bool(args.model),
                                                                 operator=args.op)
        if not implementations:
            raise UsageError(f"no implementation to check on {device}: " + "; ".join(skipped.values()))
        thresholds = Thresholds.load(args.thresholds, args.op)
        default_dtypes = MODEL_DTYPES if args.model else list(DTYPES.values())
        dtypes, unusable = runner.usable_dtypes([DTYPES[name] for name in args.dtype] if args.dtype else default_dtypes, device)
    except (UsageError, ValueError, OSError, KeyError) as error:
        print(f"python -m parity: {error}", file=sys.stderr)
        return 2

    skipped.update(unusable)
    if args.model:
        return model_parity.main(args, implementations, skipped, dtypes, device)
    cases = runner.sweep(args.examples, args.seed, args.op)
    started = time.perf_counter()
    where = ""
    if workers is not None:
        sweep = spread.Sweep(device.type, [i.name for i in implementations], dtypes, cases, thresholds,
                             args.compiled_examples, args.impl_module or [], args.timeout, args.op)
        results, per_device = spread.run(sweep, workers)
        where = " Spread over " + ", ".join(f"{name} ({count} items)" for name, count in sorted(per_device.items())) + "."
    else:
        results = runner.run(implementations, dtypes, cases, device, thresholds,
                             compiled_examples=args.compiled_examples, isolate=args.isolate, timeout=args.timeout)
    if results.empty:
        print(f"python -m parity: none of {', '.join(i.name for i in implementations)} supports "
              f"{', '.join(dtype_name(d) for d in dtypes)}", file=sys.stderr)
        return 2
    summary = summarise(results)
    elapsed = time.perf_counter() - started
    failed = int((~results["pass"]).sum())
    verdict = "PASS" if failed == 0 else f"FAIL: {failed} of {len(results)} rows over their bounds"
    operator = operators.OPERATORS[args.op]
    header = (
        f"# {operator.title} parity against the float64 reference on {device}\n\n"
        f"{len(cases)} cases ({len(operator.regressions)} regression, seed {args.seed}), "
        f"torch {torch.__version__}, {elapsed:.1f} s.{where} {verdict}."
    )
    return publish(markdown(summary, skipped, header, results), results, args.out, "parity", failed)


