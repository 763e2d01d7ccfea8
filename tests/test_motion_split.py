"""Scatter-gather motion correction (motion.split_frames > 0): template job, chunk jobs, gather.

The split run must give the one-job run's motion.zarr bit for bit (same template, same batches per frame),
and the gather must refuse a missing, damaged or foreign part with one line and write nothing.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from test_motion import _write_raw, rigid_movie

from calflow.errors import CalflowInputError
from calflow.io import MovieReader, MovieWriter, open_group
from calflow.motion.split import plan_split, read_plan
from calflow.motion.stage import correct_motion, motion_chunk, motion_gather, motion_template

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"piecewise": True, "max_shift": 6, "patch_size": 32, "overlap": 16, "template_frames": 60,
          "batch_size": 20, "num_threads": 1}
RUN_ATTRS = {"seconds", "frames_per_s"}  # the only attrs that may differ: timings


def _raw(path: Path, n: int = 130, chunk: int = 16, seed: int = 3) -> Path:
    frames, _ = rigid_movie(n=n, h=64, w=64, seed=seed)
    return _write_raw(path, np.clip(frames, 0, None).astype(np.uint16), chunk=chunk)


def _split_run(raw: Path, d: Path, split: int, params: dict) -> tuple[Path, list[Path]]:
    plan = motion_template(raw, d / "template.zarr", params=params, split_frames=split)
    parts = [d / f"part{k}.zarr" for k in range(plan.n_chunks)]
    for k, part in enumerate(parts):
        motion_chunk(raw, d / "template.zarr", part, k, params=params, progress=False)
    return d / "template.zarr", parts


def assert_same_motion(a: Path, b: Path) -> None:
    """Every array bit-identical, every attr equal but the timings, every movie chunk file byte-identical."""
    ga, gb = open_group(a), open_group(b)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp")  # Snakemake's, in outputs
        names = sorted(ga.keys())
        assert names == sorted(gb.keys())
    for name in names:
        x, y = np.asarray(ga[name]), np.asarray(gb[name])
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
        assert dict(ga[name].attrs) == dict(gb[name].attrs), name
    attrs_a, attrs_b = dict(ga.attrs), dict(gb.attrs)
    assert set(attrs_a) == set(attrs_b)
    assert {k: v for k, v in attrs_a.items() if k not in RUN_ATTRS} == \
        {k: v for k, v in attrs_b.items() if k not in RUN_ATTRS}
    files = sorted(p.relative_to(a / "movie") for p in (a / "movie").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b / "movie") for p in (b / "movie").rglob("*") if p.is_file())
    assert all((a / "movie" / f).read_bytes() == (b / "movie" / f).read_bytes() for f in files)


def test_plan_rounds_the_split_up_to_whole_zarr_chunks():
    plan = plan_split(130, 16, 40)
    assert (plan.split_frames, plan.n_chunks) == (48, 3)
    assert [plan.bounds(k) for k in range(3)] == [(0, 48), (48, 96), (96, 130)]
    assert plan_split(130, 16, 48) == plan and plan_split(130, 16, 500).n_chunks == 1
    short = plan_split(10, 16, 4)  # a movie shorter than one chunk is stored as one shorter chunk
    assert (short.chunk_frames, short.split_frames, short.n_chunks) == (10, 10, 1)
    with pytest.raises(IndexError):
        plan.bounds(3)


@pytest.mark.parametrize(("split", "params"), [
    (40, {}),  # 48-frame chunks (3 zarr chunks), not a multiple of the 20-frame batches
    (128, {"piecewise": False, "output_dtype": "float32"}),  # last part of 2 frames: under one zarr chunk
])
def test_split_run_equals_the_one_job_run_bit_for_bit(tmp_path, split, params):
    params = {**PARAMS, **params}
    raw = _raw(tmp_path / "raw.zarr")
    correct_motion(raw, tmp_path / "one.zarr", params=params, progress=False)
    template, parts = _split_run(raw, tmp_path, split, params)
    assert len(parts) == (3 if split == 40 else 2)
    stats = motion_gather(raw, template, parts, tmp_path / "split.zarr", params=params)
    assert_same_motion(tmp_path / "one.zarr", tmp_path / "split.zarr")
    assert stats["n_frames"] == 130 and MovieReader(tmp_path / "split.zarr").chunk_frames == 16
    # the gather took the parts' encoded chunks as they are (hard links), it did not re-encode them
    if split == 40:
        assert (tmp_path / "split.zarr/movie/c/3/0/0").stat().st_ino == (parts[1] / "movie/c/0/0/0").stat().st_ino


@pytest.fixture(scope="module")
def split_parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    raw = _raw(d / "raw.zarr", n=70, chunk=10)
    template, parts = _split_run(raw, d, 20, PARAMS)
    return raw, template, parts


def _flip_a_byte(part: Path) -> None:
    chunk = part / "movie" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


DAMAGES = {
    "missing part": (lambda parts: shutil.rmtree(parts[2]), r"part 2 of 4 \(frames 40-59\) is missing"),
    "missing chunk": (lambda parts: (parts[1] / "movie/c/1/0/0").unlink(), r"chunk movie/c/1/0/0 .* is missing"),
    "corrupt chunk": (lambda parts: _flip_a_byte(parts[1]), r"chunk movie/c/1/0/0 .* is corrupt"),
    "foreign part": (lambda parts: zarr.open_group(parts[3], mode="a").attrs.update(template_sha256="0" * 64),
                     "made with another template"),
    "unfinished part": (lambda parts: shutil.rmtree(parts[0] / "sum_after"), r"lacks \['sum_after'\]"),
    "part of another chunk": (lambda parts: zarr.open_group(parts[0], mode="a").attrs.update(index=1),
                              "holds chunk 1"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_gather_refuses_a_missing_or_damaged_part_and_writes_nothing(tmp_path, split_parts, damage):
    raw, template, parts = split_parts
    copies = [tmp_path / p.name for p in parts]
    for p, c in zip(parts, copies, strict=True):
        shutil.copytree(p, c)
    spoil, message = DAMAGES[damage]
    spoil(copies)
    out = tmp_path / "out" / "motion.zarr"
    with pytest.raises(CalflowInputError, match=message) as err:
        motion_gather(raw, template, copies, out, params=PARAMS)
    text = str(err.value)
    assert "part" in text and "Fix:" in text and "\n" not in text
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no output, no temporary


def test_gather_refuses_the_wrong_number_of_parts_and_other_params(tmp_path, split_parts):
    raw, template, parts = split_parts
    with pytest.raises(CalflowInputError, match="3 part store.*the plan has 4 chunks"):
        motion_gather(raw, template, parts[:3], tmp_path / "m.zarr", params=PARAMS)
    with pytest.raises(CalflowInputError, match="other motion parameters"):
        motion_gather(raw, template, parts, tmp_path / "m.zarr", params={**PARAMS, "max_shift": 5})
    assert not (tmp_path / "m.zarr").exists()


def test_adopt_chunks_refuses_a_misaligned_source(tmp_path):
    frames = np.arange(30 * 16 * 16, dtype=np.uint16).reshape(30, 16, 16)
    with MovieWriter(tmp_path / "src.zarr", (10, 16, 16), np.uint16, fps=1, chunk_frames=10) as w:
        w.write(frames[:10])
    out = MovieWriter(tmp_path / "out.zarr", (30, 16, 16), np.uint16, fps=1, chunk_frames=10)
    out.write(frames[:5])
    with pytest.raises(ValueError, match="pending"):
        out.adopt_chunks(tmp_path / "src.zarr")
    out.write(frames[5:10])
    out.adopt_chunks(tmp_path / "src.zarr")
    out.write(frames[:10])
    out.close()
    np.testing.assert_array_equal(MovieReader(tmp_path / "out.zarr")[:], np.concatenate([frames[:10]] * 3))


# ---------------------------------------------------------------------------------------------------------
# the workflow: checkpoint, chunk jobs, gather
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workflow_split_run_equals_one_job_and_reruns_nothing(tmp_path, monkeypatch):
    """A user session of 100 frames in 20-frame zarr chunks, split_frames 50 (rounded up to 60): ingest,
    the template checkpoint, 2 chunk jobs and the gather. motion.zarr equals the one-job path's (run here
    in process on the same raw.zarr), the parts are removed, and a second run has nothing to do."""
    from smkutil import dry_run, planned_jobs, run_snakemake

    from calflow.report.provenance import rule_timings

    frames, _ = rigid_movie(n=100, h=48, w=64, seed=5)
    tifffile.imwrite(tmp_path / "user.tif", np.clip(frames, 0, None).astype(np.uint16))
    motion = {**PARAMS, "split_frames": 50}
    config = {"sessions": "config/sessions.tsv", "ingest": {"chunk_frames": 20}, "motion": motion}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "config" / "sessions.tsv").write_text("session\tmovie\tcondition\tfps\nu1\tuser.tif\tA\t15\n")
    targets = ("results/u1/motion.zarr", "results/u1/plots/motion")
    out = run_snakemake(tmp_path, *targets)
    jobs = planned_jobs(out.stdout + out.stderr)
    assert {r for r, _ in jobs} == {"ingest", "motion_template", "motion_chunk", "motion_gather"}
    assert sorted(w["chunk"] for r, w in jobs if r == "motion_chunk") == ["0", "1"]
    res = tmp_path / "results" / "u1"
    assert read_plan(res / "motion_split" / "template.zarr").split_frames == 60
    assert sorted(p.name for p in (res / "motion_split").iterdir()) == ["template.zarr"]  # parts were temp()
    assert len(list((res / "plots" / "motion").glob("*.png"))) == 3
    # one log per job where the report's timing table reads them (results/logs/{rule}/{name}.log)
    logs = tmp_path / "results" / "logs"
    assert sorted(p.name for p in (logs / "motion_chunk").iterdir()) == ["u1_chunk0.log", "u1_chunk1.log"]
    assert {r["rule"] for r in rule_timings(logs) if r["status"] == "ok"} >= {"motion_template", "motion_chunk",
                                                                               "motion_gather"}
    monkeypatch.chdir(tmp_path)  # raw.zarr's path as the rule gives it (motion.zarr's motion_source attr)
    correct_motion("results/u1/raw.zarr", "one.zarr", params={k: v for k, v in motion.items() if k != "split_frames"},
                   progress=False)
    assert_same_motion(tmp_path / "one.zarr", res / "motion.zarr")
    assert dry_run(tmp_path, *targets) == []
