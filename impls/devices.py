"""The one place that knows cpu, cuda and npu.

torch_npu is imported here only, lazily and inside a try: installed without
Ascend's CANN runtime it fails on import, and nothing else in the harness may
break because of that.
"""

from __future__ import annotations

import functools
import os

import torch

DEVICE_TYPES = ("cpu", "cuda", "npu")
# Best first: what "auto" picks when several are present.
PREFERENCE = ("npu", "cuda", "cpu")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@functools.lru_cache(maxsize=None)
def torch_npu_import_error() -> str | None:
    """None when torch_npu imports (registering the npu device), else the reason."""
    try:
        import torch_npu  # noqa: F401
    except Exception as error:  # any failure, an OSError from CANN's libraries included
        return f"torch_npu not importable: {_first_line(error)}"
    return None


def type_of(device: torch.device | str) -> str:
    """'npu:0' -> 'npu' without building a torch.device, which fails for npu before torch_npu loads."""
    return device.type if isinstance(device, torch.device) else str(device).split(":", 1)[0]


def unavailable_reason(device_type: str) -> str | None:
    """A sentence saying why the device type cannot run here, or None when it can."""
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device: torch.cuda.is_available() is False"
        return None
    if device_type == "npu":
        reason = torch_npu_import_error()
        if reason is not None:
            hint = "" if os.environ.get("ASCEND_HOME_PATH") else "; source CANN's set_env.sh"
            return f"no NPU: {reason}{hint}"
        if not torch.npu.is_available():
            return "no NPU: torch.npu.is_available() is False"
        return None
    return f"unknown device type {device_type!r} (known: {', '.join(DEVICE_TYPES)})"


def best_device_type() -> str:
    return next(d for d in PREFERENCE if unavailable_reason(d) is None)


def resolve(spec: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:1', 'npu', ... -> torch.device; ValueError when absent."""
    if spec == "auto":
        spec = best_device_type()
    reason = unavailable_reason(type_of(spec))
    if reason is not None:
        raise ValueError(f"device {spec!r} is not usable here: {reason}")
    return torch.device(spec)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)
