"""Config section ``ingest`` (:class:`IngestParams`): zarr chunking, read block size, NaN policy, zstd level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, param


@dataclass
class IngestParams:
    """Tunables of the ingest stage (config section ``ingest``)."""

    chunk_frames: int = param(100, ge=1)  # frames per zarr chunk (whole frames)
    read_frames: int = param(100, ge=1)  # frames read from the source per step
    nan_policy: str = param("error", choices=("error", "fill_previous"))
    clevel: int = param(5, ge=1, le=9)  # zstd level

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | IngestParams | None) -> IngestParams:
        return from_section(cls, "ingest", cfg)

    def __post_init__(self) -> None:
        check_fields(self, "ingest")
