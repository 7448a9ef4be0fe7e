import sys

from impls.cpu_kernel import build_directory, build_error

error = build_error()
if error:
    print(error, file=sys.stderr)
    sys.exit(1)
print(f"cpu_kernel built and loaded from {build_directory()}")
