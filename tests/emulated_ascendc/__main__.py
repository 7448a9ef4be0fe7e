"""`python -m emulated_ascendc build-library` (tests/ on sys.path): build the emulated NPU's Ascend C
library and print its path, for DCNV3_ASCENDC_LIBRARY (nox -s npu-emulated)."""

import sys

from emulated_ascendc import build_library

if sys.argv[1:] != ["build-library"]:
    sys.exit("usage: python -m emulated_ascendc build-library")
print(build_library())
