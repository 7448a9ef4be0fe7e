"""Load parity/thresholds.toml: max-abs-diff bounds per dtype and quantity, with per-implementation overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEFAULT_PATH = Path(__file__).with_name("thresholds.toml")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Thresholds:
    def __init__(self, table: dict):
        self._defaults = {k: v for k, v in table.items() if k != "overrides"}
        self._overrides = table.get("overrides", {})

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH) -> "Thresholds":
        with open(path, "rb") as handle:
            return cls(tomllib.load(handle))

    def get(self, implementation: str, dtype: torch.dtype, quantity: str) -> float:
        name = dtype_name(dtype)
        override = self._overrides.get(implementation, {}).get(name, {})
        if quantity in override:
            return float(override[quantity])
        try:
            return float(self._defaults[name][quantity])
        except KeyError:
            raise KeyError(f"thresholds.toml has no [{name}] {quantity}") from None
