"""setuptools' build backend, refusing to build where InternImage's compiled DCNv3 is installed.

Both are the distribution `DCNv3`: installing the shim would uninstall the real
CUDA build, which `internimage_cuda` measures. pip builds in an isolated
environment that hides the installed packages, so the check asks the target
interpreter in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook this module does not wrap)

_PROBE = (
    "import importlib.machinery as m, importlib.util as u; s = u.find_spec('DCNv3'); "
    "print(s.origin if s is not None and isinstance(s.loader, m.ExtensionFileLoader) else '')"
)


def compiled_dcnv3() -> str:
    """Where the target interpreter's compiled DCNv3 extension is, or ''."""
    outside_isolation = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = subprocess.run([sys.executable, "-c", _PROBE], env=outside_isolation, cwd=tempfile.gettempdir(),
                           capture_output=True, text=True)
    return probe.stdout.strip()


def _step_aside() -> None:
    origin = compiled_dcnv3()
    if origin:
        raise SystemExit(
            f"DCNv3: InternImage's compiled extension is installed ({origin}); the dcnv3-harness shim steps "
            "aside and is not installed, since installing it would replace that build (internimage_cuda "
            "measures it). To use the shim instead: pip uninstall DCNv3, then install it again."
        )


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _step_aside()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _step_aside()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
