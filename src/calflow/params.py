"""Build a stage's parameter dataclass from its config section, rejecting unknown keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from calflow.errors import CalflowInputError

P = TypeVar("P")


def from_section(cls: type[P], section: str, config: Mapping[str, Any] | P | None) -> P:
    """``cls(**config)`` for the config section named ``section``; an instance passes through.

    Unknown keys raise :class:`CalflowInputError` naming the section and the allowed keys;
    value checks belong to ``cls.__post_init__``.
    """
    if isinstance(config, cls):
        return config
    values = dict(config or {})  # type: ignore[arg-type]
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise CalflowInputError(
            f"unknown key(s) in the {section} section: {', '.join(unknown)}",
            file="config",
            fix=f"use only {', '.join(sorted(known))}",
        )
    return cls(**values)
