"""Build the Ascend C kernel with CMake: `python -m impls.ascendc` (what `nox -s build-ascendc` runs).

Needs an Ascend host: CMake, CANN's environment (`source <CANN>/set_env.sh`,
which sets ASCEND_HOME_PATH and provides find_package(ASC)) and torch_npu.
Anywhere else it names what is missing in one sentence and exits 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from impls import devices
from impls.ascendc import DEFAULT_LIBRARY

SOURCE = Path(__file__).parent


def missing() -> list[str]:
    needs = []
    if shutil.which("cmake") is None:
        needs.append("cmake on PATH")
    if not os.environ.get("ASCEND_HOME_PATH"):
        needs.append("CANN's environment (ASCEND_HOME_PATH is unset; source <CANN>/set_env.sh)")
    error = devices.torch_npu_import_error()
    if error is not None:
        needs.append(error)
    return needs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impls.ascendc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="dav-2201", help="NPU architecture (default dav-2201: Atlas A2/A3, 910B)")
    args = parser.parse_args(argv)
    needs = missing()
    if needs:
        print(f"build-ascendc: cannot build the Ascend C kernel here: missing {'; '.join(needs)}", file=sys.stderr)
        return 1
    build = DEFAULT_LIBRARY.parent
    subprocess.run(["cmake", "-S", str(SOURCE), "-B", str(build), f"-DCMAKE_ASC_ARCHITECTURES={args.arch}",
                    f"-DPython3_EXECUTABLE={sys.executable}"], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j"], check=True)
    print(f"built {DEFAULT_LIBRARY}; check it with: nox -s bench-npu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
