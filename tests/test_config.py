"""Config and sessions-sheet validation: defaults filled, bad values named by file, row and field."""

from __future__ import annotations

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


def test_schema_sections_match_the_stage_parameters():
    """The schema documents exactly the keys each stage's parameter class accepts, same defaults."""
    import dataclasses

    from calflow.ingest import IngestParams
    from calflow.motion import MotionParams
    from calflow.summary import SummaryParams

    cfg = load_config("c.yaml", data={})
    for section, cls in (("ingest", IngestParams), ("motion", MotionParams), ("summary", SummaryParams)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert cfg[section] == defaults, section
    from calflow.gradcam import GradcamParams  # layer: an int in YAML, a string in the class

    assert set(cfg["gradcam"]) == {f.name for f in dataclasses.fields(GradcamParams)}
    assert GradcamParams.from_config(cfg["gradcam"]) == GradcamParams()
    from calflow.classify import ClassifyParams  # profile: resolved by load_config, not a classifier setting

    assert set(cfg["classify"]) == {f.name for f in dataclasses.fields(ClassifyParams)} | {"profile"}
    assert ClassifyParams.from_config(cfg["classify"]) == ClassifyParams()


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
