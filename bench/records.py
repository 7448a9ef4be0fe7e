"""The benchmark's record: one timed case, as the timer writes it and the CSV writer and reports/ read it.

Plain data and no torch, so that a run made on an NPU host is reported anywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("forward", "backward", "forward+backward")
# A whole model: inference and a training step (a backward alone is no workload of its own there).
MODEL_MODES = ("forward", "forward+backward")
# One timed case across implementations: the speedup's join.
CASE_KEYS = ["device", "dtype", "mode", "suite", "shape"]
# One row of a run: what --compare joins two runs on.
ROW_KEYS = ["implementation", *CASE_KEYS]


@dataclass(frozen=True)
class TimedCase:
    """An implementation timed on one shape (or whole model), mode and dtype, on one device.

    p20/p50/p80 are of pytest-benchmark's rounds, timed with a device-synchronising clock after a cache
    flush; first_call_ms is the first call of the prepared case (compilation included, input
    construction and a backward's forward not)."""

    implementation: str
    baseline: bool
    device: str
    dtype: str
    mode: str
    suite: str
    shape: str
    # The shape's own columns: N, H, W and the DCNv3 parameters, or a whole model's name and image side.
    geometry: dict
    threads: int
    rounds: int
    first_call_ms: float
    p20_ms: float
    p50_ms: float
    p80_ms: float
    peak_memory_bytes: int
    # The operator's least traffic (bench/traffic.py); None for whole models.
    bytes_moved: int | None = None
    # Whole models: the DCNv3 core's share of one profiled repetition, and where its time went.
    core_share: float | None = None
    profile_clock: str | None = None
    profile_ms: dict = field(default_factory=dict)

    @property
    def gbps(self) -> float | None:
        return None if self.bytes_moved is None else self.bytes_moved / (self.p50_ms / 1e3) / 1e9

    def row(self) -> dict:
        """The flat columns of results.csv this case contributes (the profile goes to profile.csv)."""
        row = asdict(self)
        row.update(row.pop("geometry"))
        del row["profile_ms"], row["profile_clock"]
        row["gbps"] = self.gbps
        return row

    def profile_rows(self) -> list[dict]:
        """profile.csv: one row per time family of the profiled repetition (ms, share of it)."""
        total = sum(self.profile_ms.values())
        keys = {key: getattr(self, key) for key in ROW_KEYS}
        return [{**keys, "clock": self.profile_clock, "part": part, "ms": ms, "share": ms / total}
                for part, ms in self.profile_ms.items()]
