"""Before a benchmark run: is the device there, what is it, which versions, what will distort timings, what runs.

    python -m bench.preflight --device npu

Prints the device's name, the versions (torch; CUDA; torch_npu and CANN on
Ascend), timing warnings (ASCEND_LAUNCH_BLOCKING=1 serialises operators) and
every implementation with why it cannot run there, then exits 0. Where the
device is absent, or torch is older than the harness needs, it prints one
sentence and exits 1.

It is the one command that can explain a torch_npu that fails to load: torch
>= 2.5 imports torch_npu during `import torch`, so there the failure is a
traceback before any harness code runs (impls/devices.py). This module imports
torch with that autoloading off, before anything else imports torch, and lets
the device layer import torch_npu inside a try.
"""

from __future__ import annotations

import argparse
import os
import sys

AUTOLOAD = "TORCH_DEVICE_BACKEND_AUTOLOAD"
_caller_autoload = os.environ.get(AUTOLOAD)
os.environ[AUTOLOAD] = "0"
import torch  # noqa: E402  (after switching autoloading off)

if _caller_autoload is None:
    del os.environ[AUTOLOAD]
else:
    os.environ[AUTOLOAD] = _caller_autoload

# torch.library.custom_op, register_fake and register_autograd arrived in torch 2.4.
TORCH_FLOOR = (2, 4)


def _release(version: str) -> tuple[int, int]:
    """'2.7.1+cpu' -> (2, 7)."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def torch_too_old(version: str, device_type: str) -> str | None:
    """A sentence when torch `version` predates TORCH_FLOOR, else None."""
    if _release(version) >= TORCH_FLOOR:
        return None
    floor = ".".join(map(str, TORCH_FLOOR))
    fix = f"install torch_npu >= {floor} with its matching torch" if device_type == "npu" else f"install torch >= {floor}"
    return f"torch {version} is older than the {floor} this harness needs; {fix}"


def _autoload_note() -> str:
    """Where torch loads torch_npu by itself (torch >= 2.5, torch_npu installed), a torch_npu that
    fails to load makes every other command fail in `import torch`: say so."""
    from importlib.metadata import entry_points

    if _caller_autoload == "0" or _release(torch.__version__) < (2, 5):
        return ""
    if "torch_npu" not in {entry.name for entry in entry_points(group="torch.backends")}:
        return ""
    return f" (torch loads torch_npu during `import torch`, so until then `import torch` itself fails; {AUTOLOAD}=0 skips that)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, npu or auto (best present; default)")
    args = parser.parse_args(argv)
    requested = args.device.split(":", 1)[0]
    too_old = torch_too_old(torch.__version__, requested)
    if too_old is not None:
        print(f"bench-{requested}: {too_old}", file=sys.stderr)
        return 1

    from bench import instruments
    from impls import devices  # needs torch >= TORCH_FLOOR; registers every operator's implementations
    from impls.registry import REGISTRIES

    device_type = devices.best_device_type() if args.device == "auto" else devices.type_of(args.device)
    reason = devices.unavailable_reason(device_type)
    if reason is not None:
        failed_load = device_type == "npu" and devices.torch_npu_import_error() is not None
        print(f"bench-{device_type}: {reason}{_autoload_note() if failed_load else ''}", file=sys.stderr)
        return 1
    device = devices.resolve(args.device)
    print(f"device: {device} ({devices.device_name(device)})")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in instruments.versions().items()))
    for warning in instruments.timing_warnings(device):
        print(f"warning: {warning}")
    for operator, registry in REGISTRIES.items():
        print(f"{operator} implementations:")
        for name in [n for n in registry.names() if n != "reference"]:
            why_not = registry.get(name).untimed_reason(device)
            print(f"  {name}: {'runs' if why_not is None else why_not}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
