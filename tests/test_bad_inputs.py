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


# ---------------------------------------------------------------- the defects
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
