"""`import DCNv3` for InternImage's code, computed by dcnv3-harness (impls/internimage_compat.py).

Where InternImage's own compiled extension is importable too, from any other
entry of sys.path, that one is loaded instead: the shim steps aside and says so.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _compiled_elsewhere():
    """The spec of a compiled DCNv3 extension on sys.path outside this file's folder, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or os.getcwd()) == here:
            continue
        spec = importlib.machinery.PathFinder.find_spec(__name__, [entry])
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
    return None


_compiled = _compiled_elsewhere()
if _compiled is not None:
    sys.stderr.write(f"DCNv3: InternImage's compiled extension {_compiled.origin} is installed; "
                     "the dcnv3-harness shim steps aside\n")
    _module = importlib.util.module_from_spec(_compiled)
    _compiled.loader.exec_module(_module)
    # The import statement returns what sys.modules holds once this file has run.
    sys.modules[__name__] = _module
else:
    from impls.internimage_compat import dcnv3_backward, dcnv3_forward  # noqa: F401

    # internimage_cuda measures InternImage's own build, never this module.
    HARNESS_SHIM = True
