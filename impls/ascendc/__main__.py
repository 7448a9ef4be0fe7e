"""Build the Ascend C kernel with CMake: `python -m impls.ascendc` (what `nox -s build-ascendc` runs).

Needs an Ascend host: CMake, CANN's environment (`source <CANN>/set_env.sh`,
which sets ASCEND_HOME_PATH), a CANN recent enough for asc-devkit's
torch_library example that CMakeLists.txt follows, the asc-config.cmake that
find_package(ASC) loads, and torch_npu. Anywhere else it names what is missing
in one sentence and exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from impls import devices
from impls.ascendc import DEFAULT_LIBRARY

SOURCE = Path(__file__).parent
# asc-devkit's torch_library example supports Atlas A2/A3 from CANN 9.1.0 (its README's table).
CANN_FLOOR = (9, 1, 0)
# Where CANN installs the config that find_package(ASC) reads (asc-devkit's package layout).
ASC_CONFIG_DIRS = ("lib64/cmake", "compiler/tikcpp/ascendc_kernel_cmake")


def cann_version(home: Path) -> str | None:
    """CANN's compiler version as <ASCEND_HOME_PATH>/compiler/version.info writes it (`Version=9.1.0`), or None."""
    try:
        text = (home / "compiler" / "version.info").read_text()
    except OSError:
        return None
    match = re.search(r"^Version=(\S+)", text, re.MULTILINE)
    return None if match is None else match.group(1)


def _release(version: str) -> tuple[int, ...]:
    """'8.3.RC1' -> (8, 3): the leading numeric fields."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def _cann_needs(home: Path) -> list[str]:
    floor = ".".join(map(str, CANN_FLOOR))
    version = cann_version(home)
    needs = []
    if version is None or not re.match(r"\d", version):
        needs.append(f"CANN >= {floor} (no version in {home / 'compiler' / 'version.info'})")
    elif _release(version) < CANN_FLOOR:
        needs.append(f"CANN >= {floor} (found {version})")
    prefixes = [home / d for d in ASC_CONFIG_DIRS] + [Path(p) for p in os.environ.get("CMAKE_PREFIX_PATH", "").split(os.pathsep) if p]
    if not any((prefix / "asc-config.cmake").is_file() for prefix in prefixes):
        needs.append(f"asc-config.cmake for find_package(ASC) (looked in {', '.join(str(p) for p in prefixes)})")
    return needs


def missing() -> list[str]:
    needs = []
    if shutil.which("cmake") is None:
        needs.append("cmake on PATH")
    home = os.environ.get("ASCEND_HOME_PATH")
    if not home:
        needs.append("CANN's environment (ASCEND_HOME_PATH is unset; source <CANN>/set_env.sh)")
    else:
        needs += _cann_needs(Path(home))
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
