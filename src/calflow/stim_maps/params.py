"""The ``stim_maps`` config section (:class:`StimMapsParams`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, param


@dataclass(frozen=True)
class StimMapsParams:
    """The ``stim_maps`` config section (docs/classify.md, "Controls")."""

    downsample: int = param(2, ge=1)  # block-average factor of the maps (px per map pixel)
    baseline_frames: int = param(5, ge=1)  # frames before a trial's first stimulated frame
    tail_frames: int = param(5, ge=0)  # frames after its last stimulated frame that count as response
    block_frames: int = param(200, ge=1)  # frames read at a time

    def __post_init__(self) -> None:
        check_fields(self, "stim_maps")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | StimMapsParams | None) -> StimMapsParams:
        return from_section(cls, "stim_maps", config)
