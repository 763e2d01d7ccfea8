"""Config and sessions-sheet validation: defaults filled, bad values named by file, row and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from calflow.config import (
    PROFILES,
    check_stim_log,
    check_targets,
    load_config,
    load_schema,
    load_sessions,
    validate,
)
from calflow.errors import CalflowInputError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_and_sheet_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["ingest"]["chunk_frames"] >= 1
    sessions = load_sessions(cfg["sessions"])
    assert len(sessions) >= 2
    assert len(set(sessions["condition"])) >= 2, "the demo must cover two conditions"
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert raw["classify"]["profile"] == "default" and cfg["classify"]["profile"] == "default"


def test_defaults_are_filled():
    cfg = load_config("c.yaml", data={})
    assert cfg["ingest"] == {"chunk_frames": 100, "read_frames": 100, "nan_policy": "error", "clevel": 5}
    assert cfg["seed"] == 0 and cfg["motion"]["device"] == "auto"


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"ingest": {"chunk_frames": 0}}, r"c\.yaml: field 'ingest\.chunk_frames': 0 is less than the minimum"),
        ({"ingest": {"chunkframes": 3}}, r"field 'ingest': unknown key.*allowed keys here: chunk_frames"),
        ({"motion": {"device": "gpu"}}, r"field 'motion.device': 'gpu' is not one of"),
        ({"seed": "one"}, r"field 'seed': 'one' is not of type 'integer'"),
        ({"nonsense": 1}, r"unknown key"),
        ({"classify": {"profile": "seed001"}},
         r"field 'classify\.profile': 'seed001' is not one of \['default', 'seed000'\]\. Fix: expected analysis profile"),
    ],
)
def test_bad_config_values(data, pattern):
    with pytest.raises(CalflowInputError, match=pattern):
        load_config("c.yaml", data=data)


def test_config_file_errors(tmp_path):
    with pytest.raises(CalflowInputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(CalflowInputError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"ingest": {"nan_policy": "drop"}}))
    with pytest.raises(CalflowInputError, match=r"bad\.yaml: field 'ingest\.nan_policy'"):
        load_config(bad)


def _sheet(tmp_path: Path, rows: list[str], header: str = "session\tmovie\tcondition\tfps") -> Path:
    (tmp_path / "m.tif").write_bytes(b"")
    path = tmp_path / "sessions.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_sessions_ok_with_optional_columns(tmp_path):
    (tmp_path / "log.csv").write_text("frame,targets\n0,\n1,3;5\n")
    (tmp_path / "t.csv").write_text("id,y,x,radius\n3,10,12,5\n5,20,4.5,5\n")
    path = _sheet(
        tmp_path,
        ["a\tm.tif\tPOD0\t30\tlog.csv\tt.csv", "b\tm.tif\tPOD3\t7.5\t\t"],
        header="session\tmovie\tcondition\tfps\tstim_log\ttargets",
    )
    df = load_sessions(path, base_dir=tmp_path)
    assert list(df.index) == ["a", "b"]
    assert df.loc["a", "fps"] == 30.0 and df.loc["b", "fps"] == 7.5
    assert df.loc["a", "stim_log"] == "log.csv"
    assert df.loc["b", "stim_log"] is None or df.loc["b", "stim_log"] != df.loc["b", "stim_log"]  # None/NaN


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["a\tm.tif\tPOD0\t-1"], r"sessions\.tsv: row 2, field 'fps': -1\.0 is less than or equal to the minimum"),
        (["a\tm.tif\tPOD0\tfast"], r"row 2, field 'fps': 'fast' is not of type 'number'"),
        (["a\tm.tif\tPOD0\t30", "a\tm.tif\tPOD3\t30"], r"row 3, field 'session': 'a' repeats row 2"),
        (["a b\tm.tif\tPOD0\t30"], r"row 2, field 'session': 'a b' does not match"),
        (["a\tmissing.tif\tPOD0\t30"], r"row 2, field 'movie': file 'missing\.tif' does not exist"),
        (["a\tm.tif\t\t30"], r"row 2, field '\(top level\)': 'condition' is a required property"),
        (["models\tm.tif\tPOD0\t30"], r"'models' is reserved"),
    ],
)
def test_bad_sessions_rows(tmp_path, rows, pattern):
    with pytest.raises(CalflowInputError, match=pattern):
        load_sessions(_sheet(tmp_path, rows), base_dir=tmp_path)


def test_sessions_missing_column_and_empty(tmp_path):
    with pytest.raises(CalflowInputError, match=r"missing column\(s\) fps"):
        load_sessions(_sheet(tmp_path, ["a\tm.tif\tPOD0"], header="session\tmovie\tcondition"), base_dir=tmp_path)
    with pytest.raises(CalflowInputError, match="no rows"):
        load_sessions(_sheet(tmp_path, []), base_dir=tmp_path)


def test_demo_paths_need_not_exist_yet(tmp_path):
    path = _sheet(tmp_path, ["a\tresults/demo/a/movie.tif\tPOD0\t30"])
    assert list(load_sessions(path, base_dir=tmp_path).index) == ["a"]


def test_stim_log_and_targets_checks(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("frame,targets\n0,\n1,3;x\n")
    with pytest.raises(CalflowInputError, match=r"log\.csv: row 3, field 'targets': '3;x'"):
        check_stim_log(log)
    log.write_text("frame,target\n0,\n")
    with pytest.raises(CalflowInputError, match=r"missing column\(s\) targets"):
        check_stim_log(log)
    log.write_text("frame,targets\n-1,2\n")
    with pytest.raises(CalflowInputError, match=r"row 2, field 'frame'"):
        check_stim_log(log)
    tg = tmp_path / "t.csv"
    tg.write_text("id,y,x\n0,1,2\n1,abc,3\n")
    with pytest.raises(CalflowInputError, match=r"t\.csv: row 3, field 'y': 'abc'"):
        check_targets(tg)
    tg.write_text("id,y,x\n0,1,2\n0,4,3\n")
    with pytest.raises(CalflowInputError, match=r"row 3, field .id.: target id 0 repeats"):
        check_targets(tg)
    tg.write_text("id,y\n0,1\n")
    with pytest.raises(CalflowInputError, match=r"missing column\(s\) x"):
        check_targets(tg)


def test_bad_stim_log_in_sheet_stops_early(tmp_path):
    (tmp_path / "log.csv").write_text("frame;targets\n0;1\n")
    path = _sheet(tmp_path, ["a\tm.tif\tPOD0\t30\tlog.csv"], header="session\tmovie\tcondition\tfps\tstim_log")
    with pytest.raises(CalflowInputError, match=r"log\.csv: missing column"):
        load_sessions(path, base_dir=tmp_path)


# Every config section a stage reads into a Params class, with the schema keys that are
# deliberately not fields of the class (key -> why). Sections without a Params class: NO_PARAMS.
SECTION_EXCEPTIONS = {
    "ingest": {}, "motion": {}, "summary": {}, "keyframes": {}, "segment": {}, "segment.corr_pnr": {},
    "cnmf": {}, "decode": {}, "gradcam": {}, "compare": {}, "stim_maps": {}, "tracking": {},
    "classify": {"profile": "resolved by load_config into the keys it sets (apply_profile), not a classifier key"},
    "virtual_stain": {"sheet": "the workflow reads the sheet (its datasets are the jobs); not a stage param",
                      "demo": "the demo simulator's PairParams, a free-form object (test_free_form_sections_build_their_classes)"},
}
NO_PARAMS = {
    "sessions": "a path, read by the workflow",
    "seed": "the base seed, passed to the rules as params.seed",
    "demo": "the simulator's study design (calflow.simulate.study_params / draw_nuisance arguments); its sim "
            "object is SimParams (test_free_form_sections_build_their_classes)",
    "nwb": "options of the NWB export, checked by calflow.nwb_metadata and the schema",
}
# values the schema allows that the class refuses on purpose: (section, key, value) -> why
ALLOWED_BUT_REFUSED = {("motion", "device", "cuda"): "MotionParams refuses cuda when torch sees no GPU"}
# class values the schema refuses on purpose: (section, key) -> {value: why}
CLASS_ONLY_VALUES = {("segment", "task"): {"semantic": "a library task (foreground only, the EM benchmark); the "
                                                       "workflow's segment rule needs the distance cue"}}


def _params_classes() -> dict:
    from calflow.classify.params import ClassifyParams
    from calflow.cnmf.params import CNMFParams
    from calflow.compare import CompareParams
    from calflow.decode import DecodeParams
    from calflow.gradcam import GradcamParams
    from calflow.ingest import IngestParams
    from calflow.keyframes import KeyframeParams
    from calflow.motion import MotionParams
    from calflow.segment.params import CorrPnrParams, SegmentParams
    from calflow.stim_maps import StimMapsParams
    from calflow.summary import SummaryParams
    from calflow.tracking.params import TrackingParams
    from calflow.virtual_stain.stage import VirtualStainParams

    return {"ingest": IngestParams, "motion": MotionParams, "summary": SummaryParams, "keyframes": KeyframeParams,
            "segment": SegmentParams, "segment.corr_pnr": CorrPnrParams, "cnmf": CNMFParams, "decode": DecodeParams,
            "virtual_stain": VirtualStainParams, "classify": ClassifyParams, "gradcam": GradcamParams,
            "compare": CompareParams, "stim_maps": StimMapsParams, "tracking": TrackingParams}


def _schema_section(section: str) -> dict:
    node = load_schema("config")
    for part in section.split("."):
        node = node["properties"][part]
    return node["properties"]


def _config_section(cfg: dict, section: str) -> dict:
    for part in section.split("."):
        cfg = cfg[part]
    return cfg


def test_every_section_has_a_params_class_or_a_reason():
    schema = load_schema("config")["properties"]
    assert set(schema) == {s.split(".")[0] for s in SECTION_EXCEPTIONS} | set(NO_PARAMS)
    assert set(SECTION_EXCEPTIONS) == set(_params_classes())


@pytest.mark.parametrize("section", sorted(SECTION_EXCEPTIONS))
def test_schema_section_matches_its_params_class(section):
    """The schema documents exactly the keys the stage's Params class declares: the same defaults
    (after the class's own from_config conversions), bounds and allowed values."""
    import dataclasses

    cls = _params_classes()[section]
    props = {k: v for k, v in _schema_section(section).items() if k not in SECTION_EXCEPTIONS[section]}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(props) == set(fields), f"{section}: schema-only {sorted(set(props) - set(fields))}, " \
                                      f"class-only {sorted(set(fields) - set(props))}"
    defaults = {k: v for k, v in _config_section(load_config("c.yaml", data={}), section).items() if k in props}
    built, plain = cls.from_config(defaults), cls()
    for key in props:
        assert getattr(built, key) == getattr(plain, key), f"{section}.{key}: schema default differs from the class's"
    assert built == plain
    # the declared bounds and allowed values are the schema's (list items: the items' ones)
    for key, prop in props.items():
        meta, where = fields[key].metadata, prop.get("items", {}) if prop.get("type") == "array" else prop
        assert meta.get("ge") == where.get("minimum"), f"{section}.{key}: minimum"
        assert meta.get("gt") == where.get("exclusiveMinimum"), f"{section}.{key}: exclusiveMinimum"
        assert meta.get("le") == where.get("maximum"), f"{section}.{key}: maximum"
        assert meta.get("lt") == where.get("exclusiveMaximum"), f"{section}.{key}: exclusiveMaximum"
        extra = set(CLASS_ONLY_VALUES.get((section, key), {}))
        if "enum" in where:
            assert set(meta.get("choices", ())) == set(where["enum"]) | extra, f"{section}.{key}: enum"
        else:
            assert "choices" not in meta, f"{section}.{key}: the class restricts a key the schema does not"


def _bad_values(prop: dict) -> list:
    """Values the schema refuses for a property (by type, bound, enum or length)."""
    kinds = [k for k in (prop["type"] if isinstance(prop.get("type"), list) else [prop.get("type")]) if k != "null"]
    kind = kinds[0] if len(kinds) == 1 else None  # [string, integer] (gradcam.layer): no wrong type to give
    out: list = []
    if "oneOf" in prop:
        return ["not-an-option", True]
    if kind == "array":
        item = prop.get("items", {})
        out.append("not-a-list")
        if "minItems" in prop:
            out.append([0.0] * (prop["minItems"] - 1) if item.get("type") == "number" else [])
        for bad in _bad_values(item) if item.get("type") != "array" else []:
            out.append([bad])
        return out
    if "enum" in prop:
        out.append(max(prop["enum"]) + 1 if kind == "integer" else "not-an-option")
    eps = {"integer": 1}.get(kind, 1e-6)
    for key, step in (("minimum", -eps), ("maximum", eps)):
        if key in prop:
            out.append(prop[key] + step)
    out += [prop[key] for key in ("exclusiveMinimum", "exclusiveMaximum") if key in prop]
    out += {"integer": [2.5, True], "number": ["x", True], "boolean": ["yes", 1], "string": [3]}.get(kind, [])
    return out


@pytest.mark.parametrize("section", sorted(SECTION_EXCEPTIONS))
def test_params_classes_refuse_what_the_schema_refuses_and_take_its_values(section):
    """Every value the schema's enum allows builds the class; a value outside the schema's enum,
    bounds, type or length raises CalflowInputError from the class too, naming the key."""
    import torch

    cls = _params_classes()[section]
    props = {k: v for k, v in _schema_section(section).items() if k not in SECTION_EXCEPTIONS[section]}
    validator = load_schema("config")  # the values below are checked against the schema, too
    for key, prop in props.items():
        if prop.get("type") == "object":
            continue  # a subsection (segment.corr_pnr), checked on its own
        where = prop.get("items", prop) if prop.get("type") == "array" else prop
        for value in where.get("enum", []) + [e for alt in prop.get("oneOf", []) for e in alt.get("enum", [])]:
            value = [value] if prop.get("type") == "array" else value
            refused = not isinstance(value, list) and (section, key, value) in ALLOWED_BUT_REFUSED
            if refused and not torch.cuda.is_available():
                with pytest.raises(CalflowInputError):
                    cls.from_config({key: value})
            else:
                got = getattr(cls.from_config({key: value}), key)
                assert (list(got) if isinstance(value, list) else got) == value, (section, key, value)
        for value in _bad_values(prop):
            data = {key: value}
            for part in reversed(section.split(".")):
                data = {part: data}
            with pytest.raises(CalflowInputError):  # the schema refuses it ...
                validate(data, validator, file="c.yaml")
            with pytest.raises(CalflowInputError, match=rf"{re.escape(section)}\.{key}"):  # ... and so does the class
                cls.from_config({key: value})


def test_free_form_sections_build_their_classes():
    """demo.sim and virtual_stain.demo are free-form objects in the schema (their keys are the
    classes' fields): their default {} builds the class's defaults, an unknown key or bad value is one line."""
    from calflow.simulate import SimParams
    from calflow.virtual_stain.simulate import PairParams

    cfg = load_config("c.yaml", data={})
    assert SimParams.from_dict(cfg["demo"]["sim"]) == SimParams()
    assert PairParams(**cfg["virtual_stain"]["demo"]) == PairParams()
    with pytest.raises(CalflowInputError, match=r"demo\.sim\.n_cells = 2\.5: must be an integer\. Fix: "):
        SimParams.from_dict({"n_cells": 2.5})
    with pytest.raises(CalflowInputError, match=r"config: virtual_stain\.demo\.height = 8: must be >= 16\. Fix: "):
        PairParams(height=8)


def test_one_error_format_for_bad_values():
    from calflow.classify.params import ClassifyParams
    from calflow.cnmf.params import CNMFParams

    with pytest.raises(CalflowInputError) as err:
        ClassifyParams.from_config({"dropout": 0.97})
    assert str(err.value) == "config: classify.dropout = 0.97: must be in [0, 0.95]. Fix: use a number in [0, 0.95]"
    with pytest.raises(CalflowInputError) as err:
        CNMFParams.from_config({"ar_order": 3})
    assert str(err.value) == ("config: cnmf.ar_order = 3: must be one of 1, 2. Fix: use 1 (decay only) or 2 (rise "
                              "and decay)")


def test_derived_key_lists_equal_the_lists_they_replaced():
    """The rule params and checkpoint fingerprints are built from key lists derived from the Params
    declarations (calflow.params.runtime_keys / workflow_keys / role_keys); they equal the hand-kept
    lists they replaced, so no rule re-runs and no checkpoint is orphaned."""
    import dataclasses

    from calflow.classify.params import ClassifyParams
    from calflow.config import CLASSIFY_WORKFLOW_KEYS
    from calflow.params import role_keys, runtime_keys
    from calflow.segment.params import SegmentParams
    from calflow.segment.train import TrainParams
    from calflow.virtual_stain.stage import VirtualStainParams

    # classify/train.py _RUNTIME_KEYS (left out of the checkpoint fingerprint)
    assert set(runtime_keys(ClassifyParams)) == {"device", "num_threads", "checkpoint_every", "scratch_dir",
                                                 "shuffle_control"}
    # calflow.config.CLASSIFY_WORKFLOW_KEYS (left out of the classifier's rule params)
    assert set(CLASSIFY_WORKFLOW_KEYS) == {"shuffle_control", "control_members", "scratch_dir", "profile"}
    # segment_common.smk SEGMENT_INFER_KEYS (left out of the training rule's params)
    assert role_keys(SegmentParams, "infer") == ("tta", "iou_threshold", "centroid_max_distance", "prob_threshold",
                                                 "cue_threshold", "min_size", "method", "corr_pnr")
    # segment/train.py _fingerprint: everything but the device
    assert runtime_keys(TrainParams) == ("device",)
    # virtual_stain_common.smk VS_PARAMS: the section without sheet and demo
    assert set(_schema_section("virtual_stain")) - {f.name for f in dataclasses.fields(VirtualStainParams)} == \
        {"sheet", "demo"}


def test_seed000_profile_sets_its_keys_over_explicit_values_with_one_log_line():
    lines = []
    data = {"classify": {"profile": "seed000", "context": 5, "mask": "cells"}, "gradcam": {"layer": 0},
            "compare": {"statistic": "disjoint", "n_bootstrap": 10}}
    cfg = load_config("c.yaml", data=data, log_profile=lines.append)
    assert len(lines) == 1
    (line,) = lines
    for (section, key), value in PROFILES["seed000"].items():
        assert cfg[section][key] == value, (section, key)
        assert f"{section}.{key} = {value!r}" in line
    # the profile wins over explicit values, and the line names those it replaced (mask was already cells)
    assert line.endswith("it replaced the config's classify.context = 5, gradcam.layer = 0, "
                         "compare.statistic = 'disjoint'")
    assert cfg["compare"]["n_bootstrap"] == 10 and cfg["classify"]["profile"] == "seed000"
    # the resolved config is valid, and every stage's parameter class reads its section
    validate(dict(cfg), load_schema("config"), file="c.yaml")
    from calflow.classify import ClassifyParams
    from calflow.compare import CompareParams
    from calflow.gradcam import GradcamParams

    cp = ClassifyParams.from_config(cfg["classify"])
    assert (cp.mask, cp.context) == ("cells", 0)
    assert GradcamParams.from_config(cfg["gradcam"]).layer == "last"
    cmp = CompareParams.from_config(cfg["compare"])
    assert (cmp.statistic, cmp.summary, cmp.zncc_map) == ("all", "sum", "")


def test_default_profile_changes_nothing_and_logs_nothing(caplog):
    caplog.set_level("INFO", logger="calflow.config")
    assert load_config("c.yaml", data={"classify": {"profile": "default"}}) == load_config("c.yaml", data={})
    assert caplog.records == []
    load_config("c.yaml", data={"classify": {"profile": "seed000"}})  # default sink: the calflow.config logger
    assert len(caplog.records) == 1 and "classify.profile seed000" in caplog.records[0].getMessage()
    assert "replaced" not in caplog.records[0].getMessage()  # nothing was set explicitly


def test_classifier_rule_params_leave_the_workflow_keys_out_and_size_the_control():
    from calflow.config import classify_control_members, classify_model_params

    section = {"members": 5, "control_members": 2, "shuffle_control": True, "scratch_dir": "/x", "profile": "default",
               "iterations": 400}
    assert classify_model_params(section) == {"members": 5, "iterations": 400}
    assert classify_control_members(section) == 2
    # changing a workflow-only key leaves the real classifier's params (its rerun trigger) as they were
    assert classify_model_params({**section, "control_members": 3, "shuffle_control": False}) == \
        classify_model_params(section)
    assert classify_control_members({"members": 5}) == 1  # the control is on by default, one network
    assert classify_control_members({**section, "shuffle_control": False}) == 0
    assert classify_control_members({**section, "shuffle_control": False, "control_members": 4}) == 0
