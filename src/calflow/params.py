"""A stage's config section as a dataclass: every key declared once, checked by one helper.

Each stage reads its section of ``config/config.yaml`` into a Params dataclass. Every key is a
field, declared with :func:`param`: its default, its bounds (``ge``/``gt``/``le``/``lt``) or
allowed values (``choices``), and its role:

* ``runtime=True``: the key steers only how a job runs, not what it computes (device, threads,
  checkpoint cadence, scratch paths): it is left out of the checkpoint fingerprints
  (:func:`runtime_keys`).
* ``workflow=True``: the workflow reads the key itself; it is left out of the rule's ``params``,
  so changing it re-runs nothing by itself (:func:`workflow_keys`).
* ``role="..."``: a stage's own group of keys, e.g. segment's ``infer`` keys, which re-run
  inference but not training (:func:`role_keys`).

The type comes from the field's annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``list[X]`` / ``tuple[X, ...]``). :func:`check_fields` checks every field against its declaration
and is called first in each Params ``__post_init__``; checks that involve several keys follow it,
raising :func:`invalid`, so every bad value reads
``config: <section>.<key> = <value>: <problem>. Fix: <fix>``. The help text of a key is its
``description`` in ``workflow/schemas/config.schema.yaml``; ``tests/test_config.py`` checks that
the schema's keys, defaults, bounds and allowed values equal the Params declarations.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from calflow.errors import CalflowInputError

P = TypeVar("P")
_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def param(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: Sequence[Any] | None = None, min_items: int | None = None, runtime: bool = False,
          workflow: bool = False, role: str | None = None, fix: str | None = None) -> Any:
    """A Params field: ``default`` (or ``factory()`` for a list), the bounds or allowed values of the
    value (of each item, for a list), ``min_items`` of a list, the key's role (module doc), and a
    ``fix`` that replaces the generic one of :func:`check_fields`."""
    meta: dict[str, Any] = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_items": min_items, "role": role, "fix": fix,
                            "choices": tuple(choices) if choices is not None else None}
    meta = {k: v for k, v in meta.items() if v is not None}
    if runtime:
        meta["runtime"] = True
    if workflow:
        meta["workflow"] = True
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def invalid(section: str, key: str, value: Any, problem: str, fix: str, *,
            file: str | None = "config") -> CalflowInputError:
    """The one error of a bad value: ``<file>: <section>.<key> = <value>: <problem>. Fix: <fix>``."""
    return CalflowInputError(f"{section}.{key} = {value!r}: {problem}", file=file, fix=fix)


def _kinds(annotation: Any) -> tuple[set[str], str | None, bool]:
    """(scalar kinds, item kind of a list/tuple or None, None allowed) of a field's annotation string."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds, item, nullable = set(), None, False
    for part in (p.strip() for p in text.split("|")):
        if part == "None":
            nullable = True
        elif part.startswith(("list", "tuple")):
            kinds.add("list")
            inner = part.partition("[")[2].rstrip("]").split(",")[0].strip()
            item = inner or None
        else:
            kinds.add(part)
    return kinds, item, nullable


def _is(kind: str | None, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list | tuple)
    return True  # dict, a class, ...: checked by the stage


_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}


def _range(meta: Mapping[str, Any]) -> str:
    """The allowed range as text: '>= 1', 'in (0, 1]', ..."""
    low = next(((k, meta[k]) for k in ("ge", "gt") if k in meta), None)
    high = next(((k, meta[k]) for k in ("le", "lt") if k in meta), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    k, v = low or high  # type: ignore[misc]
    return f"{_BOUNDS[k][0]} {v:g}"


def _problem(kind: str | None, value: Any, meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """(problem, generic fix) of one value against its kind and bounds / choices, or None if it is fine."""
    choices = meta.get("choices")
    if choices is not None:
        if value in choices and _is(kind, value):
            return None
        allowed = ", ".join(repr(c) if c == "" else str(c) for c in choices)
        return f"must be one of {allowed}", f"use one of {allowed}"
    if not _is(kind, value):
        return f"must be {_NAMES[kind]}", f"give {_NAMES[kind]}"  # type: ignore[index]
    if any(k in meta and not op(value, meta[k]) for k, (_, op) in _BOUNDS.items()):  # NaN fails every bound
        what = "an integer" if kind == "int" else "a number"
        return f"must be {_range(meta)}", f"use {what} {_range(meta)}"
    return None


def check_fields(obj: Any, section: str, *, file: str | None = "config") -> None:
    """Check every field of the dataclass ``obj`` against its declaration (annotation and
    :func:`param` metadata); raise :func:`invalid` for the first bad value."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kinds, item, nullable = _kinds(f.type)
        if value is None and nullable:
            continue
        meta = f.metadata
        kind = next(iter(kinds)) if len(kinds) == 1 else None
        if kind == "list":
            found = _problem("list", value, {})
            if found is None and len(value) < meta.get("min_items", 0):
                found = (f"must list at least {meta['min_items']} value(s)", f"give at least {meta['min_items']}")
            if found is None:
                for x in value:
                    bad = _problem(item, x, meta)
                    if bad is not None:
                        found = (f"item {x!r} {bad[0]}", bad[1])
                        break
        elif kind is None:
            found = None if any(_is(k, value) for k in kinds) or not kinds else \
                (f"must be {' or '.join(_NAMES.get(k, k) for k in sorted(kinds))}", "correct the value")
        else:
            found = _problem(kind, value, meta)
        if found is not None:
            raise invalid(section, f.name, value, found[0], meta.get("fix", found[1]), file=file)


def runtime_keys(cls: type) -> tuple[str, ...]:
    """The keys declared ``runtime=True`` (they steer the run, not its result), in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime"))


def workflow_keys(cls: type) -> tuple[str, ...]:
    """The keys declared ``workflow=True`` (read by the workflow, not passed as rule params)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("workflow"))


def role_keys(cls: type, role: str) -> tuple[str, ...]:
    """The keys declared ``role=role``, in field order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("role") == role)


def from_section(cls: type[P], section: str, config: Mapping[str, Any] | P | None) -> P:
    """``cls(**config)`` for the config section named ``section``; an instance passes through.

    Unknown keys raise :class:`CalflowInputError` naming the section and the allowed keys;
    value checks belong to ``cls.__post_init__`` (:func:`check_fields`).
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
