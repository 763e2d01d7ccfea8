"""Session and subject metadata of the NWB export (docs/nwb.md), checked before any job starts.

The sessions sheet's optional columns (:data:`METADATA_COLUMNS`) and the config's
``nwb.defaults`` (study-wide values for empty cells) give each session's metadata. Types and
enums are checked by ``workflow/schemas/sessions.schema.yaml``; the values a schema cannot check
(dates, ISO 8601 durations, species names) are parsed here. A bad value is one
:class:`~calflow.errors.CalflowInputError` naming the file, the row and the column; a column that
DANDI requires but no session fills is one warning line (:func:`check_sheet_metadata`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calflow.errors import CalflowInputError

METADATA_COLUMNS = ("subject_id", "species", "sex", "age", "genotype", "strain", "session_start_time",
                    "experimenter", "institution", "lab", "indicator", "imaging_location", "excitation_lambda",
                    "emission_lambda", "plane_depth", "pixel_size", "microscope")
# nwbinspector's DANDI configuration makes a missing species, sex or age CRITICAL (dandi validate fails)
DANDI_REQUIRED = ("species", "sex", "age")
# missing: a BEST_PRACTICE_SUGGESTION of nwbinspector, or a placeholder in the file
RECOMMENDED = ("session_start_time", "experimenter", "institution", "lab", "indicator", "imaging_location",
               "excitation_lambda")
SPECIES_NAMES = {"mouse": "Mus musculus", "rat": "Rattus norvegicus", "human": "Homo sapiens",
                 "macaque": "Macaca mulatta", "rhesus macaque": "Macaca mulatta", "zebrafish": "Danio rerio",
                 "marmoset": "Callithrix jacchus", "ferret": "Mustela putorius furo"}
# the forms nwbinspector's check_subject_species_form accepts (a trinomial is refused there)
_BINOMIAL = re.compile(r"^[A-Z][a-z]* [a-z]+$")
_NCBI = re.compile(r"^https?://purl\.obolibrary\.org/obo/NCBITaxon_\d+$")
_NUM = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"^P(?=\d|T\d)(?:{_NUM}Y)?(?:{_NUM}M)?(?:{_NUM}W)?(?:{_NUM}D)?"
                       rf"(?:T(?=\d)(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?$")
# days per unit, to order the bounds of an age range (months and years as their mean length)
_DAYS = (365.25, 30.4375, 7.0, 1.0, 1 / 24, 1 / 1440, 1 / 86400)


def _duration_days(text: str) -> float:
    """An ISO 8601 duration matched by :data:`_DURATION` in days."""
    return sum(float(v) * d for v, d in zip(_DURATION.match(text).groups(), _DAYS, strict=True) if v)


def _bad(what: str, value: Any, problem: str, fix: str, file: str | Path, where: str) -> CalflowInputError:
    return CalflowInputError(f"{where}field '{what}': {value!r} {problem}", file=file, fix=fix)


def parse_value(column: str, value: Any, *, file: str | Path, where: str = "", prefix: str = "") -> Any:
    """One metadata cell -> its NWB value (``session_start_time``: aware datetime, ``species``: the
    Latin binomial or NCBI URL, ``experimenter``: list of names; numbers as float); raises a
    :class:`CalflowInputError` naming ``file``, ``where`` (e.g. ``"row 3, "``) and ``prefix + column``."""
    name = prefix + column
    if column in ("excitation_lambda", "emission_lambda", "plane_depth", "pixel_size"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not number >= (0 if column == "plane_depth" else 1e-12) or number == float("inf"):
            unit = "nm" if column.endswith("lambda") else "micrometres"
            raise _bad(name, value, "is not a positive number", f"give the value in {unit}, e.g. "
                       + ("920" if column.endswith("lambda") else "150"), file, where)
        return number
    text = str(value).strip()
    if column == "session_start_time":
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(name, value, "is not an ISO 8601 date and time", "write e.g. 2024-03-01T10:30:00+01:00 "
                       "(date, T, time, UTC offset)", file, where) from None
        if when.tzinfo is None:
            raise _bad(name, value, "has no UTC offset (the time zone is ambiguous)",
                       "append the offset, e.g. 2024-03-01T10:30:00+01:00 or ...Z for UTC", file, where)
        if when > datetime.now(UTC):
            raise _bad(name, value, "is in the future", "give the time the recording started", file, where)
        return when
    if column == "species":
        species = SPECIES_NAMES.get(text.lower(), text)
        if not (_BINOMIAL.match(species) or _NCBI.match(species)):
            raise _bad(name, value, "is not a Latin binomial or an NCBI taxonomy URL",
                       "write the genus and species, e.g. 'Mus musculus' (or mouse, rat, human, macaque, zebrafish), "
                       "or an NCBI taxonomy URL such as http://purl.obolibrary.org/obo/NCBITaxon_10090", file, where)
        return species.replace("https://", "http://", 1)  # the form DANDI's checks expect
    if column == "age":
        parts = text.split("/")
        if len(parts) > 2 or not all(_DURATION.match(p) for p in parts if p) or not parts[0]:
            raise _bad(name, value, "is not an ISO 8601 duration",
                       "write e.g. P90D (90 days), P12W (weeks), P3M (months), a range P60D/P90D or an open "
                       "range P90D/ (90 days or older)", file, where)
        if len(parts) == 2 and parts[1] and _duration_days(parts[1]) <= _duration_days(parts[0]):
            raise _bad(name, value, "is a range whose upper bound is not above its lower bound",
                       "write the younger age first, e.g. P60D/P90D", file, where)
        return text
    if column == "sex":
        if text not in ("M", "F", "U", "O"):
            raise _bad(name, value, "is not a sex code", "use M (male), F (female), U (unknown) or O (other)",
                       file, where)
        return text
    if column == "subject_id":
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", text):
            raise _bad(name, value, "is not a valid subject id",
                       "use letters, digits, '_', '.', '-' (no '/' or spaces)", file, where)
        return text
    if column == "experimenter":
        return [n.strip() for n in text.split(";") if n.strip()]
    if column not in METADATA_COLUMNS:
        raise CalflowInputError(f"{where}field '{name}' is not a metadata column", file=file,
                                fix=f"use one of {', '.join(METADATA_COLUMNS)}")
    return text


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value).strip() != ""


def raw_metadata(row: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A session's metadata cells (sheet cell, else ``nwb.defaults``), unparsed and JSON-safe (the
    ``nwb`` rule's params): only the columns that have a value."""
    out = {}
    for col in METADATA_COLUMNS:
        value = row.get(col)
        if not _given(value):
            value = (defaults or {}).get(col)
        if _given(value):
            out[col] = value.item() if hasattr(value, "item") else value
    return out


def parse_metadata(raw: Mapping[str, Any], *, file: str | Path, where: str = "") -> dict[str, Any]:
    """Every value of :func:`raw_metadata` parsed by :func:`parse_value`."""
    return {col: parse_value(col, value, file=file, where=where) for col, value in raw.items()}


def check_sheet_metadata(sheet: Any, nwb_config: Mapping[str, Any], *, sheet_file: str | Path,
                         config_file: str | Path) -> list[str]:
    """Check every session's metadata (``sheet``: the validated sessions DataFrame, rows in file
    order) and ``nwb.defaults``; raise on the first bad value; return the warning lines (at most
    one): the DANDI-required and recommended columns that some session leaves empty."""
    defaults = dict(nwb_config.get("defaults") or {})
    for col, value in defaults.items():
        parse_value(col, value, file=config_file, prefix="nwb.defaults.")
    missing: dict[str, list[str]] = {}
    for i, (_, row) in enumerate(sheet.iterrows()):
        raw = raw_metadata(row.to_dict(), None)
        parse_metadata(raw, file=sheet_file, where=f"row {i + 2}, ")
        have = {**{k: v for k, v in defaults.items() if _given(v)}, **raw}
        for col in (*DANDI_REQUIRED, *RECOMMENDED):
            if col not in have:
                missing.setdefault(col, []).append(str(row["session"]))
    if not missing:
        return []
    n = len(sheet)

    def listing(cols: tuple[str, ...]) -> str:
        return ", ".join(f"{c} ({len(missing[c])} of {n} sessions)" if len(missing[c]) < n else c
                         for c in cols if c in missing)

    required, recommended = listing(DANDI_REQUIRED), listing(RECOMMENDED)
    parts = []
    if required:
        parts.append(f"the NWB files lack DANDI-required column(s) {required}: `dandi validate` and an upload to "
                     "DANDI will fail")
    if recommended:
        parts.append(f"{'they also lack' if required else 'the NWB files lack'} recommended column(s) {recommended}")
    return [f"{sheet_file}: {'; '.join(parts)}. Fix: add the column(s) to the sessions sheet, or give study-wide "
            f"values under nwb.defaults in {config_file} (docs/nwb.md)"]
