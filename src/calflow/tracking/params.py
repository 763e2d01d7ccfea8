"""Config section ``tracking`` (:class:`TrackingParams`): cross-session registration and cell matching.

docs/tracking.md explains every key and how the match threshold is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, invalid, param


@dataclass(frozen=True)
class TrackingParams:
    """``tracking`` config section (px are pixels of the reference session's frames)."""

    enabled: bool = param(True, workflow=True,
                          fix="use true (track every animal with two or more sessions) or false (no tracking rules)")
    reference: str = param("first", choices=("first", "middle"),
                           fix="use first (the animal's first session in the sheet) or middle")
    image: str = param("mean", choices=("mean", "local_corr", "max"), fix="use mean, local_corr or max")
    transform: str = param("piecewise", choices=("rigid", "affine", "piecewise"),
                           fix="use rigid, affine or piecewise (affine plus a smooth residual)")
    highpass_px: float = param(8.0, gt=0, fix="use about twice the cell radius, e.g. 8")
    patch_size: int = param(32, ge=16, fix="use about a quarter of the FOV, e.g. 32 for 128 px frames")
    max_shift_px: float = param(20.0, gt=0, fix="use the largest expected shift between days, e.g. 20")
    mask_threshold: float = param(0.2, gt=0, lt=1, fix="use e.g. 0.2 of a footprint's peak")
    max_distance_px: float = param(8.0, gt=0, fix="use about two cell radii, e.g. 8")
    distance_scale_px: float = param(3.0, gt=0, fix="use about a cell radius, e.g. 3")
    iou_weight: float = param(0.5, ge=0, le=1, fix="use e.g. 0.5 (score = w IoU + (1 - w) distance term)")
    threshold: str = param("mixture", choices=("mixture", "fixed"),
                           fix="use mixture (from the score distribution) or fixed (fixed_threshold)")
    fixed_threshold: float = param(0.5, gt=0, lt=1, fix="use e.g. 0.5")
    accepted_only: bool = param(True, fix="use true (CNMF's accepted components) or false (all)")

    def __post_init__(self) -> None:
        check_fields(self, "tracking")
        if self.patch_size < 2 * self.highpass_px:
            raise invalid("tracking", "patch_size", self.patch_size,
                          f"is smaller than 2 * highpass_px = {2 * self.highpass_px:g}",
                          "use a larger patch_size or a smaller highpass_px")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | TrackingParams | None) -> TrackingParams:
        return from_section(cls, "tracking", config)
