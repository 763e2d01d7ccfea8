"""The ``cnmf`` config section as a dataclass (no torch: the CaImAn rule reads it too)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.errors import CalflowInputError
from calflow.params import from_section

BACKENDS = ("calflow", "caiman")


@dataclass(frozen=True)
class CNMFParams:
    """``cnmf`` config section (docs/cnmf.md explains every key)."""

    backend: str = "calflow"
    n_iter: int = 2
    nb: int = 2
    dilation: int = 3
    chunk_frames: int = 200
    hals_temporal: int = 5
    hals_spatial: int = 5
    merge_threshold: float = 0.85
    add_components: int = 0
    new_radius: float = 4.0
    add_min_pnr: float = 15.0
    ar_order: int = 2
    min_snr: float = 3.0
    min_r_spatial: float = 0.6
    dff_window_s: float = 30.0
    dff_percentile: float = 8.0
    device: str = "auto"

    def __post_init__(self) -> None:
        def bad(key: str, problem: str, fix: str) -> CalflowInputError:
            return CalflowInputError(f"field 'cnmf.{key}': {problem}", file="config", fix=fix)

        if self.backend not in BACKENDS:
            raise bad("backend", f"unknown backend {self.backend!r}", f"use one of {', '.join(BACKENDS)}")
        if self.ar_order not in (1, 2):
            raise bad("ar_order", f"{self.ar_order} is not 1 or 2", "use 1 (decay only) or 2 (rise and decay)")
        for key in ("n_iter", "nb", "dilation", "add_components"):
            if getattr(self, key) < 0:
                raise bad(key, f"{getattr(self, key)} is negative", "use a value >= 0")
        for key in ("chunk_frames", "hals_temporal", "hals_spatial"):
            if getattr(self, key) < 1:
                raise bad(key, f"{getattr(self, key)} is below 1", "use a value >= 1")
        if not 0 < self.merge_threshold <= 1:
            raise bad("merge_threshold", f"{self.merge_threshold} is outside (0, 1]", "use e.g. 0.85 (1 = never merge)")
        if not 0 <= self.dff_percentile <= 100:
            raise bad("dff_percentile", f"{self.dff_percentile} is outside 0-100", "use e.g. 8")
        if self.dff_window_s <= 0 or self.new_radius <= 0:
            raise bad("dff_window_s/new_radius", "must be > 0", "use a positive value")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", f"unknown device {self.device!r}", "use auto, cpu or cuda")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CNMFParams | None) -> CNMFParams:
        return from_section(cls, "cnmf", config)
