import sys

from impls.cpu_kernel import NAME, build_error, extension_directory

error = build_error()
if error:
    print(error, file=sys.stderr)
    sys.exit(1)
print(f"cpu_kernel built and loaded from {extension_directory(NAME)}")
