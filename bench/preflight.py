"""Before a benchmark run: is the device there, what is it, which versions, what will distort timings, what runs.

    python -m bench.preflight --device npu

Prints the device's name, the versions (torch; CUDA; torch_npu and CANN on
Ascend), timing warnings (ASCEND_LAUNCH_BLOCKING=1 serialises operators) and
every implementation with why it cannot run there, then exits 0. Where the
device is absent it prints one sentence and exits 1.
"""

from __future__ import annotations

import argparse
import sys

import impls
from impls import devices


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, npu or auto (best present; default)")
    args = parser.parse_args(argv)
    device_type = devices.best_device_type() if args.device == "auto" else devices.type_of(args.device)
    reason = devices.unavailable_reason(device_type)
    if reason is not None:
        print(f"bench-{device_type}: {reason}", file=sys.stderr)
        return 1
    device = devices.resolve(args.device)
    print(f"device: {device} ({devices.device_name(device)})")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in devices.versions().items()))
    for warning in devices.timing_warnings(device):
        print(f"warning: {warning}")
    for name in [n for n in impls.names() if n != "reference"]:
        why_not = impls.get(name).untimed_reason(device)
        print(f"  {name}: {'runs' if why_not is None else why_not}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
