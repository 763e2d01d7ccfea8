"""Bad input, stage by stage: every kind gets one line naming the file, the row/field and the fix,
and leaves no output behind (docs/reliability.md lists the kinds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from calflow.errors import CalflowInputError
from calflow.ingest import ingest
from calflow.io import MovieWriter


def assert_one_clear_line(err: CalflowInputError, file: str | Path, *where: str) -> str:
    """The message is one line, starts with the file, names ``where`` and ends with a fix."""
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{file}: "), msg
    for w in where:
        assert w in msg, (w, msg)
    assert ". Fix: " in msg and len(msg.split(". Fix: ", 1)[1]) > 10, msg
    return msg


# ---------------------------------------------------------------- the issue's defects
def test_a_single_2d_image_is_refused_at_ingest_and_writes_nothing(tmp_path):
    image = np.random.default_rng(0).integers(0, 4000, (64, 64), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "still.tif", image)
    with pytest.raises(CalflowInputError) as err:
        ingest(tmp_path / "still.tif", tmp_path / "raw.zarr", fps=10)
    assert_one_clear_line(err.value, tmp_path / "still.tif", "single 2-D image (64 x 64 px), not a movie")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["still.tif"]  # no store, no temporary


def test_a_folder_of_single_frame_tiffs_is_still_a_movie(tmp_path):
    frames = np.random.default_rng(0).integers(0, 4000, (3, 16, 16), dtype=np.uint16)
    (tmp_path / "seq").mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(tmp_path / "seq" / f"f{i:03d}.tif", f)
    info = ingest(tmp_path / "seq", tmp_path / "raw.zarr", fps=10)
    assert info["shape"] == [3, 16, 16]


def _motion_store(path: Path, shape=(40, 64, 64)) -> Path:
    with MovieWriter(path, shape, np.uint16, fps=10, chunk_frames=20) as w:
        w.write(np.full(shape, 100, np.uint16))
    return path


def test_a_target_outside_the_frame_is_refused_with_its_row(tmp_path):
    from calflow.stim_maps import session_stim_maps

    motion = _motion_store(tmp_path / "motion.zarr")
    (tmp_path / "targets.csv").write_text("id,y,x\n0,10,12\n1,400,20\n")
    (tmp_path / "log.csv").write_text("frame,targets\n5,0\n6,1\n")
    entry = {"session": "s", "condition": "A", "motion": motion, "stim_log": tmp_path / "log.csv",
             "targets": tmp_path / "targets.csv"}
    with pytest.raises(CalflowInputError) as err:
        session_stim_maps(entry, {}, tmp_path / "stim_maps.zarr")
    assert_one_clear_line(err.value, tmp_path / "targets.csv", "row 3, field 'y'", "y = 400",
                          "outside the 64 x 64 px frame")
    assert not list(tmp_path.glob("*stim_maps*"))


def test_the_classifier_refuses_a_target_outside_the_frame_before_streaming(tmp_path):
    from calflow.classify import ClassifyParams, load_session, read_targets

    motion = _motion_store(tmp_path / "motion.zarr")
    (tmp_path / "targets.csv").write_text("id,y,x\n0,10,12\n1,20,-0\n2,30,64\n")
    (tmp_path / "log.csv").write_text("frame,targets\n5,0\n")
    entry = {"session": "s", "motion": motion, "stim_log": tmp_path / "log.csv", "targets": tmp_path / "targets.csv"}
    with pytest.raises(CalflowInputError) as err:
        load_session(entry, read_targets(tmp_path / "targets.csv"), ClassifyParams(scratch_dir=str(tmp_path)))
    assert_one_clear_line(err.value, tmp_path / "targets.csv", "row 4, field 'x'", "x = 64")


# ---------------------------------------------------------------- the sweep: every kind of bad value
# Each case builds one bad input in ``d`` and returns (call, the file the line must start with,
# what it must name). docs/reliability.md lists the same kinds; tests/test_faults.py has the
# damaged stores, checkpoints, truncated TIFF through the workflow and full disks.
SHEET_HEAD = "session\tmovie\tcondition\tfps\tstim_log\ttargets\tmasks\tanimal\tgroup"


def _sheet(d: Path, *rows: str, head: str = SHEET_HEAD) -> Path:
    tifffile.imwrite(d / "m.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    (d / "sessions.tsv").write_text("\n".join([head, *rows]) + "\n")
    return d / "sessions.tsv"


def _load_sheet(d: Path, *rows: str, head: str = SHEET_HEAD):
    from calflow.config import load_sessions

    path = _sheet(d, *rows, head=head)
    return (lambda: load_sessions(path, base_dir=d)), path


def _nwb_metadata(d: Path, column: str, value: str, defaults: dict | None = None):
    """The NWB metadata of a sheet (a column of calflow.nwb_metadata.METADATA_COLUMNS), checked as the
    workflow checks it before any job starts; ``defaults``: config nwb.defaults (named config.yaml)."""
    from calflow.config import load_sessions
    from calflow.nwb_metadata import check_sheet_metadata

    path = _sheet(d, f"a\tm.tif\tA\t30\t{value}", head=f"session\tmovie\tcondition\tfps\t{column}")
    config = d / "config.yaml"
    return (lambda: check_sheet_metadata(load_sessions(path, base_dir=d), {"defaults": defaults or {}},
                                         sheet_file=path, config_file=config)), (config if defaults else path)


def _config(d: Path, text: str):
    from calflow.config import load_config

    (d / "config.yaml").write_text(text)
    return (lambda: load_config(d / "config.yaml")), d / "config.yaml"


def _movie(d: Path, name: str, write) -> tuple:
    path = d / name
    write(path)
    return (lambda: ingest(path, d / "raw.zarr", fps=10)), path


def _tif(data) -> callable:
    return lambda p: tifffile.imwrite(p, data)


def _truncated_tif(p: Path) -> None:
    tifffile.imwrite(p, np.ones((30, 32, 32), np.uint16))
    p.write_bytes(p.read_bytes()[:20000])


def _stim(d: Path, log: str, targets: str = "id,y,x\n0,10,10\n1,20,20\n"):
    from calflow.stim_maps import session_stim_maps

    (d / "log.csv").write_text(log)
    (d / "t.csv").write_text(targets)
    motion = _motion_store(d / "motion.zarr")
    entry = {"session": "s", "condition": "A", "motion": motion, "stim_log": d / "log.csv", "targets": d / "t.csv"}
    return lambda: session_stim_maps(entry, {}, d / "out.zarr")


def _stim_case(d: Path, log: str, targets: str = "id,y,x\n0,10,10\n1,20,20\n", file: str = "log.csv"):
    return _stim(d, log, targets), d / file


def _table(d: Path, text: str):
    from calflow.decode import read_trials

    (d / "stim.csv").write_text(text)
    return (lambda: read_trials(d / "stim.csv")), d / "stim.csv"


def _masks(d: Path, name: str, write):
    from calflow.metrics import read_masks

    write(d / name)
    return (lambda: read_masks(d / name, (64, 64))), d / name


def _vs_sheet(d: Path, *rows: str, head: str = "dataset\timage\tlabel_free\tfluorescence\tsplit"):
    from calflow.virtual_stain.sheet import load_sheet

    for n in ("a", "b"):
        tifffile.imwrite(d / f"{n}.tif", np.zeros((8, 8), np.uint16))
    (d / "vs.tsv").write_text("\n".join([head, *(r.replace("DIR/", f"{d}/") for r in rows)]) + "\n")
    return (lambda: load_sheet(d / "vs.tsv")), d / "vs.tsv"


def _pretrained(d: Path):
    from calflow.segment.stage import train_from_sessions

    (d / "seg.pt").write_bytes(b"not a model at all")
    return (lambda: train_from_sessions([], {}, d / "out.pt", d / "out.json", checkpoint_dir=d / "ck",
                                        pretrained=str(d / "seg.pt"))), d / "seg.pt"


OK = "a\tm.tif\tA\t30\t\t\t\t\t"
CASES = {
    # sessions sheet (validated before any job starts)
    "sheet: fps not a number": (lambda d: _load_sheet(d, "a\tm.tif\tA\tfast\t\t\t\t\t"), ["row 2", "field 'fps'"]),
    "sheet: fps zero or negative": (lambda d: _load_sheet(d, "a\tm.tif\tA\t-1\t\t\t\t\t"), ["row 2", "field 'fps'"]),
    "sheet: session name with a space": (lambda d: _load_sheet(d, "a b\tm.tif\tA\t30\t\t\t\t\t"), ["row 2", "field 'session'"]),
    "sheet: session repeated": (lambda d: _load_sheet(d, OK, OK), ["row 3", "field 'session'"]),
    "sheet: reserved session name": (lambda d: _load_sheet(d, "models\tm.tif\tA\t30\t\t\t\t\t"), ["row 2", "field 'session'"]),
    "sheet: condition missing": (lambda d: _load_sheet(d, "a\tm.tif\t\t30\t\t\t\t\t"), ["row 2", "condition"]),
    "sheet: movie file missing": (lambda d: _load_sheet(d, "a\tnone.tif\tA\t30\t\t\t\t\t"), ["row 2", "field 'movie'"]),
    "sheet: stim log file missing": (lambda d: _load_sheet(d, "a\tm.tif\tA\t30\tno.csv\t\t\t\t"), ["row 2", "field 'stim_log'"]),
    "sheet: required column missing": (lambda d: _load_sheet(d, "a\tm.tif\tA", head="session\tmovie\tcondition"), ["fps"]),
    "sheet: no rows": (lambda d: _load_sheet(d), ["no rows"]),
    "sheet: animal in two groups": (lambda d: _load_sheet(d, "a_1\tm.tif\tA\t30\t\t\t\ta\tCFA", "a_2\tm.tif\tB\t30\t\t\t\ta\tveh"),
                                    ["row 3", "field 'group'"]),
    # NWB metadata columns of the sheet and config nwb.defaults (checked before any job starts)
    "sheet: NWB sex not M/F/U/O": (lambda d: _nwb_metadata(d, "sex", "X"), ["row 2", "field 'sex'"]),
    "sheet: NWB age not ISO 8601": (lambda d: _nwb_metadata(d, "age", "60 days"), ["row 2", "field 'age'", "P90D"]),
    "sheet: NWB start time not a date": (lambda d: _nwb_metadata(d, "session_start_time", "yesterday"),
                                         ["row 2", "field 'session_start_time'"]),
    "sheet: NWB species not a binomial": (lambda d: _nwb_metadata(d, "species", "unicorn"), ["row 2", "field 'species'"]),
    "sheet: NWB wavelength not a number": (lambda d: _nwb_metadata(d, "excitation_lambda", "blue"),
                                           ["row 2", "field 'excitation_lambda'"]),
    "config: nwb.defaults age not ISO 8601": (lambda d: _nwb_metadata(d, "sex", "F", {"age": "sixty"}),
                                              ["field 'nwb.defaults.age'"]),
    # config
    "config: unknown key": (lambda d: _config(d, "motion: {max_shfit: 3}\n"), ["field 'motion'", "max_shfit"]),
    "config: wrong type": (lambda d: _config(d, "motion: {max_shift: large}\n"), ["field 'motion.max_shift'"]),
    "config: not YAML": (lambda d: _config(d, "motion: {max_shift: [\n"), ["not valid YAML"]),
    "config: not a mapping": (lambda d: _config(d, "- a\n- b\n"), ["mapping"]),
    "config: unknown profile": (lambda d: _config(d, "classify: {profile: best}\n"), ["field 'classify.profile'"]),
    # movies (ingest)
    "movie: truncated TIFF": (lambda d: _movie(d, "m.tif", _truncated_tif), ["truncated"]),
    "movie: not a TIFF": (lambda d: _movie(d, "m.tif", lambda p: p.write_bytes(b"junk" * 100)), ["not a readable TIFF"]),
    "movie: a single 2-D image": (lambda d: _movie(d, "m.tif", _tif(np.ones((16, 16), np.uint16))), ["single 2-D image"]),
    "movie: 4-D (channels or planes)": (lambda d: _movie(d, "m.npy", lambda p: np.save(p, np.ones((4, 3, 8, 8), np.uint16))),
                                        ["expected 3 dimensions"]),
    "movie: NaN frames": (lambda d: _movie(d, "m.npy", lambda p: np.save(p, np.where(np.arange(4)[:, None, None] == 2, np.nan,
                                                                                      np.ones((4, 8, 8), np.float32)))),
                          ["frame(s) contain NaN (frames 2)"]),
    "movie: complex pixels": (lambda d: _movie(d, "m.npy", lambda p: np.save(p, np.ones((4, 8, 8), np.complex64))),
                              ["unsupported pixel type"]),
    "movie: unknown format": (lambda d: _movie(d, "m.avi", lambda p: p.write_bytes(b"x")), ["unknown movie format"]),
    "movie: HDF5 without one 3-D dataset": (lambda d: _movie(d, "m.h5", _h5_two), ["2 3-D datasets"]),
    "movie: truncated .npy": (lambda d: _movie(d, "m.npy", _truncated_npy), ["truncated"]),
    # stim logs (the classifier, stim_maps, gradcam)
    "stim log: frame not an integer": (lambda d: _stim_case(d, "frame,targets\n1.5,0\n"), ["row 2", "field 'frame'"]),
    "stim log: target ids not ';'-separated": (lambda d: _stim_case(d, "frame,targets\n3,0;x\n"), ["row 2", "field 'targets'"]),
    "stim log: column missing": (lambda d: _stim_case(d, "frame,target\n3,0\n"), ["missing column(s) targets"]),
    "stim log: frame past the movie": (lambda d: _stim_case(d, "frame,targets\n3,0\n400,1\n"), ["row 3", "field 'frame'"]),
    "stim log: unknown target id": (lambda d: _stim_case(d, "frame,targets\n3,7\n"), ["row 2", "field 'targets'", "7"]),
    "stim log: no stimulated frame": (lambda d: _stim_case(d, "frame,targets\n3,\n"), ["no stimulated frame"]),
    # stimulus tables (decode)
    "stimulus table: frame not an integer": (lambda d: _table(d, "frame,stimulus\nten,grating\n"), ["row 2", "field 'frame'"]),
    "stimulus table: stimulus empty": (lambda d: _table(d, "frame,stimulus\n10,\n"), ["row 2", "field 'stimulus'"]),
    "stimulus table: spontaneous epoch without stop": (lambda d: _table(d, "frame,stimulus,stop\n10,spontaneous,\n"),
                                                       ["row 2", "field 'stop'"]),
    "stimulus table: wrong columns": (lambda d: _table(d, "time,label\n10,a\n"), ["need frame and targets"]),
    # targets tables
    "targets: y not a number": (lambda d: _stim_case(d, "frame,targets\n3,0\n", "id,y,x\n0,abc,3\n", "t.csv"),
                                ["row 2", "field 'y'"]),
    "targets: negative x": (lambda d: _stim_case(d, "frame,targets\n3,0\n", "id,y,x\n0,3,-2\n", "t.csv"), ["row 2", "field 'x'"]),
    "targets: id repeated": (lambda d: _stim_case(d, "frame,targets\n3,0\n", "id,y,x\n0,3,2\n0,4,4\n", "t.csv"),
                             ["row 3", "field 'id'"]),
    "targets: outside the frame": (lambda d: _stim_case(d, "frame,targets\n3,0\n", "id,y,x\n0,400,2\n", "t.csv"),
                                   ["row 2", "field 'y'", "outside the 64 x 64 px frame"]),
    "targets: no rows": (lambda d: _stim_case(d, "frame,targets\n3,0\n", "id,y,x\n", "t.csv"), ["no rows"]),
    # manual masks
    "masks: label image of another size": (lambda d: _masks(d, "m.tif", _tif(np.zeros((32, 32), np.uint16))),
                                           ["(32, 32)", "(64, 64)"]),
    "masks: unknown format": (lambda d: _masks(d, "m.csv", lambda p: p.write_text("x")), ["unknown mask format"]),
    "masks: unreadable regions.json": (lambda d: _masks(d, "regions.json", lambda p: p.write_text("[{")),
                                       ["cannot read Neurofinder regions"]),
    "masks: unreadable label image": (lambda d: _masks(d, "m.tif", lambda p: p.write_bytes(b"junk" * 10)),
                                      ["cannot read masks"]),
    # virtual-stain sheet
    "virtual-stain sheet: column missing": (lambda d: _vs_sheet(d, "x\ta\tDIR/a.tif\tDIR/b.tif", head="dataset\timage\tlabel_free\tfluorescence"),
                                            ["split"]),
    "virtual-stain sheet: image file missing": (lambda d: _vs_sheet(d, "x\ta\tDIR/no.tif\tDIR/b.tif\ttrain"), ["row 2", "field 'label_free'"]),
    "virtual-stain sheet: bad split": (lambda d: _vs_sheet(d, "x\ta\tDIR/a.tif\tDIR/b.tif\tvalidation"), ["row 2", "field 'split'"]),
    "virtual-stain sheet: image repeated": (lambda d: _vs_sheet(d, "x\ta\tDIR/a.tif\tDIR/b.tif\ttrain", "x\ta\tDIR/a.tif\tDIR/b.tif\ttest"),
                                            ["row 3"]),
    "virtual-stain sheet: no test images": (lambda d: _vs_sheet(d, "x\ta\tDIR/a.tif\tDIR/b.tif\ttrain"), ["dataset 'x'"]),
    # pretrained files
    "pretrained segmenter: not a model file": (lambda d: _pretrained(d), ["not a readable checkpoint, truncated or damaged"]),
}


def _h5_two(p: Path) -> None:
    import h5py

    with h5py.File(p, "w") as f:
        f["a"] = np.ones((4, 8, 8), np.uint16)
        f["b"] = np.ones((4, 8, 8), np.uint16)


def _truncated_npy(p: Path) -> None:
    np.save(p, np.ones((40, 32, 32), np.uint16))
    p.write_bytes(p.read_bytes()[:5000])


@pytest.mark.parametrize("kind", list(CASES))
def test_every_kind_of_bad_input_is_one_clear_line_and_leaves_no_output(tmp_path, kind):
    build, where = CASES[kind]
    call, file = build(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(CalflowInputError) as err:
        call()
    assert_one_clear_line(err.value, file, *where)
    assert {p.name for p in tmp_path.iterdir()} == before, "the failed step left an output behind"


JSON_READERS = {
    "decode.json": ("calflow.decode.store", "read_decode", "decode stage"),
    "classifier metrics.json": ("calflow.classify.store", "read_classifier_metrics", "train_classifier stage"),
    "segmenter_metrics.json": ("calflow.segment.store", "read_segmenter_metrics", "train_segmenter stage"),
    "segment_eval.json": ("calflow.segment.store", "read_segment_eval", "evaluate_segment stage"),
    "virtual_stain metrics.json": ("calflow.virtual_stain.store", "read_virtual_stain_metrics", "virtual_stain stage"),
    "comparison JSON": ("calflow.compare.store", "read_comparison", "compare stage"),
    "cross-day comparison JSON": ("calflow.tracking.crossday", "read_crossday", "track_crossday stage"),
}


@pytest.mark.parametrize("damage", ["missing", "garbled", "not an object", "empty object"])
@pytest.mark.parametrize("name", list(JSON_READERS))
def test_every_stage_json_reader_turns_a_damaged_file_into_one_line_naming_it(tmp_path, name, damage):
    """The typed readers of the stages' JSON outputs (what the report, compare and NWB read): a
    missing, truncated, non-object or (where keys are required) key-less file is one
    CalflowInputError naming the file and the stage to rerun, never a KeyError/JSONDecodeError."""
    import importlib

    module, func, stage = JSON_READERS[name]
    read = getattr(importlib.import_module(module), func)
    path = tmp_path / "out.json"
    if damage != "missing":
        path.write_text({"garbled": '{"status": "ok", "classes": [', "not an object": "[1, 2]",
                         "empty object": "{}"}[damage])
    if damage == "empty object" and name == "comparison JSON":
        assert read(path) == {}  # the comparison has no required key
        return
    with pytest.raises(CalflowInputError) as err:
        read(path)
    msg = str(err.value)
    assert str(path) in msg and stage in msg and "\n" not in msg
