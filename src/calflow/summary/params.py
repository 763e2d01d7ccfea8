"""Config section ``summary`` (:class:`SummaryParams`): frames per streamed block."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calflow.params import check_fields, from_section, param


@dataclass(frozen=True)
class SummaryParams:
    """``summary`` config section. batch_size: frames per streamed block (memory ~ 8 x block)."""

    batch_size: int = param(200, ge=2, fix="use about 200")

    def __post_init__(self) -> None:
        check_fields(self, "summary")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SummaryParams | None) -> SummaryParams:
        return from_section(cls, "summary", config)
