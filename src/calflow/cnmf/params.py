"""The ``cnmf`` config section as a dataclass (no torch: the CaImAn rule reads it too)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, param

BACKENDS = ("calflow", "caiman")


@dataclass(frozen=True)
class CNMFParams:
    """``cnmf`` config section (docs/cnmf.md explains every key)."""

    backend: str = param("calflow", choices=BACKENDS)
    n_iter: int = param(2, ge=0)
    nb: int = param(2, ge=0)
    dilation: int = param(3, ge=0)
    chunk_frames: int = param(200, ge=1)
    hals_temporal: int = param(5, ge=1)
    hals_spatial: int = param(5, ge=1)
    merge_threshold: float = param(0.85, gt=0, le=1, fix="use e.g. 0.85 (1 = never merge)")
    add_components: int = param(0, ge=0)
    new_radius: float = param(4.0, gt=0)
    add_min_pnr: float = param(15.0, ge=0)
    ar_order: int = param(2, choices=(1, 2), fix="use 1 (decay only) or 2 (rise and decay)")
    min_snr: float = param(3.0, ge=0)
    min_r_spatial: float = param(0.6, ge=-1, le=1)
    dff_window_s: float = param(30.0, gt=0)
    dff_percentile: float = param(8.0, ge=0, le=100, fix="use e.g. 8")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), runtime=True)

    def __post_init__(self) -> None:
        check_fields(self, "cnmf")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | CNMFParams | None) -> CNMFParams:
        return from_section(cls, "cnmf", config)
