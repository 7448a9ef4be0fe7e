"""Load parity/thresholds.toml: the per-case bound of each dtype and quantity, with per-implementation overrides.

The rule is flash-attention's (tests/test_flash_attn.py): on each case an
implementation may err at most k times as much as the same-precision PyTorch
baseline does on the same inputs (max abs), and m times its mean abs error;
floors cover cases the baseline gets (almost) exactly right, and a static
ceiling caps everything. The numbers and where they came from are in the TOML.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from impls.cli import dtype_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEFAULT_PATH = Path(__file__).with_name("thresholds.toml")


@dataclass(frozen=True)
class Limits:
    """One case's verdict under a Bound: the limits used, which one decided, and whether the case passed."""

    max_bound: float
    mean_bound: float
    rule: str
    passed: bool


@dataclass(frozen=True)
class Bound:
    k: float
    m: float
    floor: float
    mean_floor: float
    ceiling: float

    def judge(self, max_abs: float, mean_abs: float, baseline_max: float, baseline_mean: float) -> Limits:
        """max_abs <= min(max(k * baseline_max, floor), ceiling) and mean_abs <= max(m * baseline_mean, mean_floor).

        A baseline that could not compute the case (NaN: it raised) leaves the ceiling alone."""
        if math.isnan(baseline_max):
            max_bound, mean_bound, rule = self.ceiling, math.inf, "ceiling (the baseline raised)"
        else:
            scaled = self.k * baseline_max
            max_bound = min(max(scaled, self.floor), self.ceiling)
            mean_bound = max(self.m * baseline_mean, self.mean_floor)
            rule = "ceiling" if max_bound == self.ceiling else ("k x baseline" if scaled >= self.floor else "floor")
        return Limits(max_bound, mean_bound, rule, bool(max_abs <= max_bound and mean_abs <= mean_bound))


# Operators other than DCNv3 keep their tables under their name ([msda.float32], [msda.overrides...]);
# DCNv3's stay at the top, where they were before there was a second operator.
OPERATOR_SECTIONS = ("msda",)


class Thresholds:
    """[rule] holds k and m for every dtype and quantity; [<dtype>] <quantity> = {ceiling, floor, mean_floor},
    optionally with k or m of its own; [overrides.<implementation>.<dtype>] <quantity> = {any of the five}.
    An operator's section ([msda]) holds the same tables for it, under the same [rule]."""

    def __init__(self, table: dict, operator: str = "dcnv3"):
        self._rule = table.get("rule", {})
        if operator != "dcnv3":
            if operator not in table:
                raise KeyError(f"thresholds file has no [{operator}] tables")
            table = table[operator]
        ignored = ("rule", "overrides", *OPERATOR_SECTIONS)
        self._defaults = {k: v for k, v in table.items() if k not in ignored}
        self._overrides = table.get("overrides", {})

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH, operator: str = "dcnv3") -> "Thresholds":
        with open(path, "rb") as handle:
            return cls(tomllib.load(handle), operator)

    def get(self, implementation: str, dtype: torch.dtype, quantity: str) -> Bound:
        name = dtype_name(dtype)
        entry = {**self._rule, **self._defaults.get(name, {}).get(quantity, {})}
        missing = [f.name for f in fields(Bound) if f.name not in entry]
        if missing:
            raise KeyError(f"thresholds.toml has no {', '.join(missing)} for [{name}] {quantity}")
        bound = Bound(**{f.name: float(entry[f.name]) for f in fields(Bound)})
        override = self._overrides.get(implementation, {}).get(name, {}).get(quantity, {})
        return replace(bound, **{key: float(value) for key, value in override.items()})
