"""Config section ``keyframes`` (:class:`KeyframeParams`): method, K, block size, and each method's knobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, param


@dataclass(frozen=True)
class KeyframeParams:
    """``keyframes`` config section (see :mod:`calflow.keyframes`)."""

    method: str = param("activity", choices=("activity", "kmeans"))
    n_keyframes: int = param(50, ge=1)
    batch_size: int = param(200, ge=1)
    highpass_sigma: float = param(6.0, gt=0)
    baseline_frames: int = param(50, ge=1)
    top_fraction: float = param(0.01, gt=0, le=1)
    min_gap: int = param(3, ge=1)
    n_components: int = param(20, ge=1)
    downsample: int = param(2, ge=1)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "keyframes")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | KeyframeParams | None) -> KeyframeParams:
        return from_section(cls, "keyframes", config)
