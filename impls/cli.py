"""What the command lines share: the dtypes by name, and the error that means bad usage."""

from __future__ import annotations

import torch

DTYPES = {name: getattr(torch, name) for name in ("float64", "float32", "float16", "bfloat16")}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32': the one spelling of a dtype in ids, rows and messages."""
    return str(dtype).removeprefix("torch.")


class UsageError(Exception):
    """Bad command line: exit status 2."""
