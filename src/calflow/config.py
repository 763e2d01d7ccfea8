"""Load and validate the workflow config and the sessions sheet against JSON schemas.

Validation fills in schema defaults, so every stage sees a complete section. Every problem is
reported as one :class:`~calflow.errors.CalflowInputError` naming the file, the row (for the
sheet) and the field, before any job starts.

Analysis profiles (``classify.profile``, :data:`PROFILES`) are resolved here too, once, before the
sections reach the rules: a profile sets keys of several sections (the classifier's input, the
Grad-CAM layer, the comparison's statistic), so the rules' params carry the values it set and
Snakemake re-runs exactly the stages whose values changed.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jsonschema import Draft202012Validator, validators

from calflow.classify.params import ClassifyParams
from calflow.errors import CalflowInputError
from calflow.params import workflow_keys

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"
RESERVED_SESSION_NAMES = {"models", "compare", "report", "demo", "logs", "benchmarks", "classifier"}

log = logging.getLogger("calflow.config")

# classify.profile -> the (section, key) values it sets; they win over the user's own values.
PROFILES: dict[str, dict[tuple[str, str], Any]] = {
    "default": {},
    # The first seed study's analysis, kept as a documented sensitivity analysis (docs/classify.md,
    # "Profiles"): the cells mask, a single frame as input, Grad-CAM (ReLU-ed maps) at the last conv
    # block, and the summed off-diagonal ZNCC over every pattern pair. compare.zncc_map "" makes the
    # comparison use the Grad-CAM stores' own (ReLU) maps and leaves the controls' maps their own.
    "seed000": {
        ("classify", "mask"): "cells",
        ("classify", "context"): 0,
        ("gradcam", "layer"): "last",
        ("gradcam", "method"): "gradcam",
        ("gradcam", "zncc_map"): "relu",
        ("compare", "zncc_map"): "",
        ("compare", "statistic"): "all",
        ("compare", "summary"): "sum",
    },
}
PROFILE_LABELS = {
    "default": "the default analysis",
    "seed000": "the first seed study's analysis, a sensitivity analysis: cells mask, single frame, last conv "
               "block, ReLU Grad-CAM maps, summed off-diagonal ZNCC over all pattern pairs (docs/classify.md)",
}


def _with_defaults(validator_class: type) -> type:
    """A jsonschema validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                elif sub.get("type") == "object" and name not in instance and "properties" in sub:
                    instance[name] = {}  # so nested defaults get filled too
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _with_defaults(Draft202012Validator)


def load_schema(name: str, schema_dir: str | Path | None = None) -> dict[str, Any]:
    """Load ``{name}.schema.yaml`` from ``schema_dir`` (default: the repo's workflow/schemas)."""
    path = Path(schema_dir or SCHEMA_DIR) / f"{name}.schema.yaml"
    with open(path) as fh:
        return yaml.safe_load(fh)


def _field(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key(s)")
    return error.message


def validate(instance: dict[str, Any], schema: dict[str, Any], *, file: str | Path, row: int | None = None) -> dict:
    """Validate ``instance`` in place (defaults filled) and return it; raise on the first error."""
    validator = DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = errors[0]
        where = f"row {row}, " if row is not None else ""
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        sub = err.schema if isinstance(err.schema, dict) else {}
        if err.validator == "additionalProperties":
            allowed = ", ".join(sub.get("properties", {})) or "none"
            fix = f"remove or rename it; allowed keys here: {allowed}"
        elif sub.get("description"):
            fix = f"expected {sub['description']}"
        else:
            fix = "correct the value (see the schemas in workflow/schemas/)"
        raise CalflowInputError(f"{where}field '{_field(err)}': {_describe(err)}{more}", file=file, fix=fix)
    return instance


def apply_profile(cfg: dict[str, Any], given: Mapping[str, Any] | None = None, *,
                  file: str | Path = "config") -> str | None:
    """Resolve ``cfg["classify"]["profile"]`` in place: set every key of :data:`PROFILES` [profile]
    (the profile wins over the user's values). ``given``: the config as the user wrote it (before
    defaults), to name the keys whose explicit value the profile replaced. Returns the one log line
    listing every key the profile set (None for a profile that sets nothing)."""
    name = (cfg.get("classify") or {}).get("profile", "default")
    if name not in PROFILES:
        raise CalflowInputError(f"field 'classify.profile': {name!r} is not a profile", file=file,
                                fix=f"use one of {', '.join(PROFILES)}")
    values = PROFILES[name]
    if not values:
        return None
    given = given or {}
    replaced = []
    for (section, key), value in values.items():
        mine = given.get(section) if isinstance(given.get(section), Mapping) else {}
        if key in mine and str(mine[key]) != str(value):
            replaced.append(f"{section}.{key} = {mine[key]!r}")
        cfg.setdefault(section, {})[key] = value
    line = (f"classify.profile {name}, {PROFILE_LABELS.get(name, name)}; it set "
            + ", ".join(f"{section}.{key} = {value!r}" for (section, key), value in values.items()))
    if replaced:
        line += f"; it replaced the config's {', '.join(replaced)}"
    return line


def load_config(path: str | Path, schema_dir: str | Path | None = None, *, data: dict | None = None,
                log_profile: Callable[[str], Any] | None = None) -> dict:
    """Read (unless ``data`` is given) and validate the workflow config; return it with defaults
    and its ``classify.profile`` resolved (:func:`apply_profile`). The profile's one log line goes to
    ``log_profile`` (default: the ``calflow.config`` logger at INFO)."""
    path = Path(path)
    if data is None:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError as err:
            raise CalflowInputError("config file not found", file=path, fix="pass --configfile") from err
        except yaml.YAMLError as err:
            raise CalflowInputError(f"not valid YAML ({err})", file=path,
                                    fix="correct the YAML syntax at the line and column given") from err
    if not isinstance(data, dict):
        raise CalflowInputError("the config must be a mapping of sections", file=path,
                                fix="write one 'section: {key: value}' block per stage, as in config/config.yaml")
    cfg = validate(copy.deepcopy(data), load_schema("config", schema_dir), file=path)
    line = apply_profile(cfg, data, file=path)
    if line:
        (log_profile or log.info)(line)
    return cfg


def _read_table(path: Path, required: list[str], what: str) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except FileNotFoundError as err:
        raise CalflowInputError(f"{what} not found", file=path, fix="check the path") from err
    except Exception as err:  # noqa: BLE001 - pandas parser errors
        raise CalflowInputError(f"cannot parse {what} ({err})", file=path) from err
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CalflowInputError(
            f"missing column(s) {', '.join(missing)} (found: {', '.join(df.columns)})",
            file=path,
            fix=f"the header must contain {', '.join(required)}",
        )
    return df


def _coerce_row(row: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    """Turn the sheet's strings into the schema's types; drop empty optional cells."""
    out: dict[str, Any] = {}
    props = schema.get("properties", {})
    for key, value in row.items():
        value = value.strip()
        if value == "":
            continue
        kind = props.get(key, {}).get("type")
        if kind == "number":
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value  # the schema reports it
        elif kind == "integer":
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def load_sessions(
    path: str | Path,
    schema_dir: str | Path | None = None,
    *,
    base_dir: str | Path | None = None,
    produced_prefixes: tuple[str, ...] = ("results/",),
    animal_separator: str = "_",
) -> pd.DataFrame:
    """Read and validate the sessions sheet; return it indexed by ``session``.

    Paths are checked to exist unless they start with one of ``produced_prefixes`` (files the
    workflow itself makes, such as the simulated demo sessions). Stim logs and target tables that
    exist are checked for their columns here too, so a bad file stops the run before any job.
    An empty or missing ``animal`` is the session name before ``animal_separator``
    (:func:`default_animal`); an animal's sessions must share their ``group``.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    schema = load_schema("sessions", schema_dir)
    df = _read_table(path, list(schema.get("required", [])), "sessions sheet")
    if df.empty:
        raise CalflowInputError("the sessions sheet has no rows", file=path, fix="add one row per movie")
    rows = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(df.to_dict("records")):
        line = i + 2  # 1-based line in the file, after the header
        row = validate(_coerce_row(raw, schema), schema, file=path, row=line)
        name = row["session"]
        if name in RESERVED_SESSION_NAMES:
            raise CalflowInputError(
                f"row {line}, field 'session': '{name}' is reserved", file=path, fix="rename the session"
            )
        if name in seen:
            raise CalflowInputError(
                f"row {line}, field 'session': '{name}' repeats row {seen[name]}",
                file=path,
                fix="give every session a unique name",
            )
        seen[name] = line
        for field in ("movie", "stim_log", "targets", "masks"):
            spec = row.get(field)
            if not spec or spec.startswith(produced_prefixes):
                continue
            for part in spec.split("#", 1)[0].split(";"):
                part = part.strip()
                if any(c in part for c in "*?["):
                    continue  # patterns are expanded by ingest, which reports no match
                p = Path(part) if Path(part).is_absolute() else base / part
                if not p.exists():
                    raise CalflowInputError(
                        f"row {line}, field '{field}': file '{part}' does not exist",
                        file=path,
                        fix="correct the path (relative paths are taken from the working directory)",
                    )
                if field == "stim_log":
                    check_stim_log(p)
                elif field == "targets":
                    check_targets(p)
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("stim_log", "targets", "masks", "animal", "group"):
        if col not in out.columns:
            out[col] = None
    out["animal"] = [a if isinstance(a, str) and a else default_animal(s, animal_separator)
                     for s, a in zip(out["session"], out["animal"], strict=True)]
    _check_animal_groups(out, path)
    return out.set_index("session", drop=False)


def default_animal(session: str, separator: str = "_") -> str:
    """The animal of a session without an ``animal`` cell: its name before the first ``separator``."""
    return session.split(separator, 1)[0] if separator else session


def _check_animal_groups(sheet: pd.DataFrame, path: Path) -> None:
    """An animal belongs to one experimental group (the ``group`` column)."""
    first: dict[str, tuple[int, Any]] = {}
    for i, (animal, group) in enumerate(zip(sheet["animal"], sheet["group"], strict=True)):
        line = i + 2
        g = group if isinstance(group, str) and group else None
        if animal in first and first[animal][1] != g:
            raise CalflowInputError(
                f"row {line}, field 'group': animal '{animal}' is in group {g!r} here but {first[animal][1]!r} in "
                f"row {first[animal][0]}", file=path,
                fix="give all sessions of one animal the same group (the group is a property of the animal)")
        first.setdefault(animal, (line, g))


_FRAME_FIX = "give the movie frame (0 = the first) as a whole number"
_TARGETS_RE = re.compile(r"^\s*(\d+(\s*;\s*\d+)*)?\s*$")


def check_stim_log(path: str | Path) -> pd.DataFrame:
    """Validate a stim log (``frame,targets``: ``;``-separated target ids, empty for none) or a
    stimulus table (``frame,stimulus``: one row per onset with the stimulus' name; decode only)."""
    path = Path(path)
    head = _read_table(path, ["frame"], "stim log")
    if "stimulus" in head.columns and "targets" not in head.columns:
        for i, (frame, stim) in enumerate(zip(head["frame"], head["stimulus"], strict=True)):
            if not frame.strip().isdigit():
                raise CalflowInputError(
                    f"row {i + 2}, field 'frame': '{frame}' is not a non-negative integer", file=path, fix=_FRAME_FIX
                )
            if not stim.strip():
                raise CalflowInputError(f"row {i + 2}, field 'stimulus' is empty", file=path,
                                        fix="name the stimulus shown at every onset row")
        return head
    df = _read_table(path, ["frame", "targets"], "stim log")
    for i, (frame, targets) in enumerate(zip(df["frame"], df["targets"], strict=True)):
        if not frame.strip().isdigit():
            raise CalflowInputError(
                f"row {i + 2}, field 'frame': '{frame}' is not a non-negative integer", file=path, fix=_FRAME_FIX
            )
        if not _TARGETS_RE.match(targets):
            raise CalflowInputError(
                f"row {i + 2}, field 'targets': '{targets}' is not ';'-separated target ids",
                file=path,
                fix="write e.g. '3' or '3;5', or leave it empty for no stimulation",
            )
    return df


def check_targets(path: str | Path) -> pd.DataFrame:
    """Validate a targets table (``id,y,x[,radius]``; y, x, radius in pixels)."""
    path = Path(path)
    df = _read_table(path, ["id", "y", "x"], "targets table")
    for col in ("id", "y", "x", "radius"):
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values < 0)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise CalflowInputError(
                f"row {i + 2}, field '{col}': '{df[col].iloc[i]}' is not a non-negative number", file=path,
                fix="give id, y, x (and radius) as numbers >= 0; y, x, radius in pixels of the movie"
            )
    dup = pd.to_numeric(df["id"]).duplicated()
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise CalflowInputError(f"row {i + 2}, field 'id': target id {df['id'].iloc[i]} repeats", file=path,
                                fix="give every target a unique id")
    return df


# keys of the classify section that only steer the workflow: they are left out of the real
# classifier's params, so changing them re-trains nothing. They are the ClassifyParams keys declared
# workflow=True (scratch_dir is a path of the machine that the script reads from the config;
# shuffle_control and control_members size the control) and the profile, which load_config resolves
CLASSIFY_WORKFLOW_KEYS = (*workflow_keys(ClassifyParams), "profile")


def classify_model_params(section: Mapping[str, Any]) -> dict[str, Any]:
    """The real classifier's rule params: the ``classify`` section without the workflow keys."""
    return {k: v for k, v in section.items() if k not in CLASSIFY_WORKFLOW_KEYS}


def classify_control_members(section: Mapping[str, Any]) -> int:
    """Members of the shuffled-label control that rule ``train_classifier`` trains after the real
    classifier: ``control_members`` (default 1) with ``shuffle_control`` on, else 0 (no control; its
    size then re-runs nothing)."""
    return int(section.get("control_members", 1)) if section.get("shuffle_control", True) else 0

