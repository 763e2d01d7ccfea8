"""NWB export (issue 22): metadata checks, and the workflow's NWB files checked by nwbinspector
(DANDI configuration), pynwb's validator, a round trip against the zarr stores and `dandi validate`
on an organised copy. The workflow tests re-run only the `nwb` rule on a copy of the shared tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
import yaml
from smkutil import TINY_SESSIONS, copy_run, dry_run, run_snakemake

from calflow.cnmf.nwb import export_nwb, inspect_nwb
from calflow.cnmf.store import read_cnmf
from calflow.errors import CalflowInputError
from calflow.io import open_group
from calflow.nwb_metadata import check_sheet_metadata, parse_value

SESSIONS = [s for s, _ in TINY_SESSIONS]
NWB_FILES = [f"results/{s}/{s}.nwb" for s in SESSIONS]
# per session (the sheet) and study-wide (nwb.defaults), as a lab would fill them
SHEET_META = {"a1_A": {"sex": "F", "age": "P90D", "session_start_time": "2024-03-01T10:30:00+01:00"},
              "a1_B": {"sex": "F", "age": "P93D", "session_start_time": "2024-03-04T10:45:00+01:00"}}
DEFAULTS = {"species": "Mus musculus", "genotype": "Thy1-GCaMP6f/wt", "experimenter": "Doe, Jane; Roe, Rick",
            "institution": "Example University", "lab": "Example Lab", "indicator": "GCaMP6f",
            "imaging_location": "SSp-ll2/3", "excitation_lambda": 920, "emission_lambda": 510, "plane_depth": 150,
            "pixel_size": 1.2, "microscope": "Example two-photon microscope"}
BLOCKING = ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR", "PYNWB_VALIDATION")


def add_metadata(workdir: Path, sheet: dict[str, dict[str, str]] | None = None, **nwb: object) -> None:
    """Metadata columns into the workdir's sheet, ``nwb`` keys (and the defaults) into its config."""
    path = workdir / "config" / "sessions.tsv"
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for session, cells in (SHEET_META if sheet is None else sheet).items():
        for col, value in cells.items():
            if col not in df.columns:
                df[col] = ""
            df.loc[df["session"] == session, col] = value
    df.to_csv(path, sep="\t", index=False)
    cfg_path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["nwb"] = {"defaults": dict(DEFAULTS), "experiment_description": "calflow tiny workflow test",
                  "keywords": ["test"], **nwb}
    cfg_path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def nwb_run(tiny_run, tmp_path_factory):
    """The tiny run with metadata added: only the nwb jobs re-run (their params changed)."""
    work = copy_run(tiny_run, tmp_path_factory.mktemp("nwb") / "run")
    add_metadata(work, inspect=True)  # the rule's own nwbinspector run (the demo config turns it off)
    jobs = dry_run(work, *NWB_FILES)
    assert sorted((rule, w.get("session")) for rule, w in jobs) == [("nwb", s) for s in SESSIONS], jobs
    proc = run_snakemake(work, *NWB_FILES)
    assert "DANDI-required" not in proc.stdout + proc.stderr  # every required column is filled
    return work


# ---------------------------------------------------------------- metadata checks (fast)
@pytest.mark.parametrize("column, value, problem", [
    ("session_start_time", "2024-13-01T10:00:00+01:00", "is not an ISO 8601 date and time"),
    ("session_start_time", "01/03/2024", "is not an ISO 8601 date and time"),
    ("session_start_time", "2024-03-01T10:00:00", "has no UTC offset"),
    ("session_start_time", "2999-03-01T10:00:00Z", "is in the future"),
    ("age", "90 days", "is not an ISO 8601 duration"),
    ("age", "P", "is not an ISO 8601 duration"),
    ("species", "mouse-ish", "is not a Latin binomial"),
    ("species", "Mus musculus domesticus", "is not a Latin binomial"),  # nwbinspector refuses trinomials
    ("age", "P90D/P60D", "is a range whose upper bound is not above its lower bound"),
    ("sex", "male", "is not a sex code"),
    ("excitation_lambda", "blue", "is not a positive number"),
    ("plane_depth", -3, "is not a positive number"),
    ("subject_id", "m1/left", "is not a valid subject id"),
])
def test_a_bad_metadata_value_names_file_row_column_and_fix(column, value, problem):
    with pytest.raises(CalflowInputError) as err:
        parse_value(column, value, file="config/sessions.tsv", where="row 3, ")
    msg = str(err.value)
    assert msg.startswith(f"config/sessions.tsv: row 3, field '{column}': {value!r} {problem}"), msg
    assert "Fix: " in msg and "\n" not in msg


def test_metadata_values_are_parsed_to_what_nwb_wants():
    assert parse_value("species", "mouse", file="f") == "Mus musculus"
    assert parse_value("age", "P60D/P90D", file="f") == "P60D/P90D"
    assert parse_value("age", "P1.5Y/", file="f") == "P1.5Y/"  # open range: 1.5 years or older
    assert parse_value("species", "https://purl.obolibrary.org/obo/NCBITaxon_10090", file="f") == (
        "http://purl.obolibrary.org/obo/NCBITaxon_10090")
    assert parse_value("experimenter", "Doe, Jane; Roe, Rick", file="f") == ["Doe, Jane", "Roe, Rick"]
    when = parse_value("session_start_time", "2024-03-01T10:30:00Z", file="f")
    assert when.utcoffset().total_seconds() == 0 and when.hour == 10
    assert parse_value("excitation_lambda", "920", file="f") == 920.0


def test_missing_dandi_columns_give_one_warning_naming_them():
    sheet = pd.DataFrame([{"session": "s1", "sex": "F"}, {"session": "s2"}])
    lines = check_sheet_metadata(sheet, {"defaults": {"species": "Mus musculus"}}, sheet_file="sessions.tsv",
                                 config_file="config.yaml")
    assert len(lines) == 1
    assert "DANDI-required column(s) sex (1 of 2 sessions), age:" in lines[0]
    assert "species" not in lines[0].split("recommended")[0]  # the default fills it
    assert "nwb.defaults in config.yaml" in lines[0]
    full = {c: "x" for c in ("institution", "lab", "indicator", "imaging_location", "experimenter")}
    filled = pd.DataFrame([{"session": "s1", "sex": "F", "age": "P9W", "excitation_lambda": 920.0,
                            "session_start_time": "2024-01-01T00:00:00Z", **full}])
    assert check_sheet_metadata(filled, {"defaults": {"species": "Rattus norvegicus"}}, sheet_file="s",
                                config_file="c") == []


def test_a_bad_default_names_the_config_key():
    with pytest.raises(CalflowInputError, match=r"config.yaml: field 'nwb.defaults.sex': 'X' is not a sex code"):
        check_sheet_metadata(pd.DataFrame([{"session": "s"}]), {"defaults": {"sex": "X"}}, sheet_file="s",
                             config_file="config.yaml")


def test_the_demo_sheet_and_config_fill_every_dandi_column():
    from calflow.config import load_config, load_sessions

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config" / "config.yaml")
    sheet = load_sessions(root / "config" / "sessions.tsv", base_dir=root)
    assert check_sheet_metadata(sheet, cfg["nwb"], sheet_file="sessions.tsv", config_file="config.yaml") == []


# ---------------------------------------------------------------- the workflow's files
@pytest.mark.slow
def test_nwbinspector_finds_nothing_critical_in_the_workflow_files(nwb_run):
    for f in NWB_FILES:
        found = inspect_nwb(nwb_run / f)
        assert not {k: v for k, v in found.items() if k in BLOCKING}, f"{f}: {found}"
        # the rule ran the same check and logged it
        log = (nwb_run / "results" / "logs" / "nwb" / f"{Path(f).stem}.log").read_text()
        assert "nwbinspector (DANDI configuration)" in log and "CRITICAL" not in log


@pytest.mark.slow
def test_without_metadata_nwbinspector_reports_the_missing_subject_fields(tiny_run):
    """The check above can fail: the tiny run's own files (no metadata) are not DANDI-ready."""
    found = inspect_nwb(tiny_run / NWB_FILES[0])
    critical = " ".join(found.get("CRITICAL", []))
    assert "check_subject_species_exists" in critical and "check_subject_sex" in critical, found


@pytest.mark.slow
def test_pynwb_validator_passes(nwb_run, tmp_path):
    from pynwb import validate

    def errors_of(path: Path) -> list:
        found = validate(path=str(path))
        return list(found[0] if isinstance(found, tuple) else found)

    for f in NWB_FILES:
        assert errors_of(nwb_run / f) == [], f
    # the check can fail: a copy without its required session_start_time is reported
    import shutil

    import h5py

    damaged = tmp_path / "damaged.nwb"
    shutil.copy(nwb_run / NWB_FILES[0], damaged)
    with h5py.File(damaged, "a") as h5:
        del h5["session_start_time"]
    assert "session_start_time" in " ".join(map(str, errors_of(damaged)))


def _dense(ps, H: int, W: int) -> np.ndarray:
    """(K, H*W) footprints back from a PlaneSegmentation's pixel masks (x, y, weight)."""
    out = np.zeros((len(ps), H * W), np.float64)
    for k in range(len(ps)):
        for x, y, w in ps["pixel_mask"][k]:
            out[k, int(y) * W + int(x)] = w
    return out


@pytest.mark.slow
@pytest.mark.parametrize("session", SESSIONS)
def test_round_trip_reads_every_item_back_equal_to_the_stores(nwb_run, session):
    from pynwb import NWBHDF5IO

    from calflow.stimulation import find_trials, read_labels, read_targets

    res = nwb_run / "results"
    path = res / session / f"{session}.nwb"
    r = read_cnmf(res / session / "cnmf.zarr")
    H, W = r["attrs"]["frame_shape"]
    motion, summary = open_group(res / session / "motion.zarr"), open_group(res / session / "summary.zarr")
    raw = open_group(res / session / "raw.zarr")
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        checked = set()
        # metadata
        meta = {**DEFAULTS, **SHEET_META[session]}
        assert nwb.session_id == session and nwb.session_start_time.isoformat() == meta["session_start_time"]
        assert list(nwb.experimenter) == ["Doe, Jane", "Roe, Rick"] and nwb.institution == meta["institution"]
        assert nwb.lab == meta["lab"] and nwb.experiment_description == "calflow tiny workflow test"
        assert {"test", session.split("_")[1]} <= set(nwb.keywords[:])
        subj = nwb.subject
        assert (subj.subject_id, subj.species, subj.sex, subj.age, subj.genotype) == (
            "a1", "Mus musculus", "F", meta["age"], meta["genotype"])
        plane = nwb.imaging_planes["ImagingPlane"]
        assert (plane.indicator, plane.location, plane.excitation_lambda) == ("GCaMP6f", "SSp-ll2/3", 920.0)
        assert plane.imaging_rate == 30.0 and list(plane.origin_coords[:]) == [0, 0, 150.0]
        assert list(plane.grid_spacing[:]) == [1.2, 1.2] and plane.optical_channel[0].emission_lambda == 510.0
        assert nwb.devices["Microscope"].description == meta["microscope"]
        # the movie: linked, and the linked file holds raw.zarr's frames
        twop = nwb.acquisition["TwoPhotonSeries"]
        assert twop.format == "external" and list(twop.starting_frame[:]) == [0] and twop.rate == 30.0
        linked = (path.parent / twop.external_file[0]).resolve()
        assert linked == (nwb_run / f"results/demo/{session}/movie.tif").resolve()
        np.testing.assert_array_equal(tifffile.imread(linked), raw["movie"][...])
        assert twop.num_samples == raw["movie"].shape[0]
        checked.add("TwoPhotonSeries")
        ophys = nwb.processing["ophys"]
        # motion correction: the corrected movie (time, x, y) and the shifts
        stack = ophys["MotionCorrection"].corrected_image_stacks["CorrectedImageStack"]
        np.testing.assert_array_equal(stack.corrected.data[:], np.transpose(motion["movie"][...], (0, 2, 1)))
        assert stack.original is twop
        np.testing.assert_allclose(stack.xy_translation.data[:], -motion["rigid_shifts"][...][:, ::-1])
        np.testing.assert_allclose(ophys["patch_shifts"].data[:], motion["patch_shifts"][...])
        patches = ophys["motion_patches"].to_dataframe()
        assert sorted(set(patches["center_y"])) == sorted(motion["patch_centers_y"][...].tolist())
        assert sorted(set(patches["center_x"])) == sorted(motion["patch_centers_x"][...].tolist())
        checked |= {"MotionCorrection", "patch_shifts", "motion_patches"}
        # summary images (x, y)
        images = ophys["SummaryImages"].images
        for name in summary.array_keys():
            if summary[name].ndim == 2:
                np.testing.assert_array_equal(images[name].data[:], summary[name][...].T)
        np.testing.assert_array_equal(images["motion_template"].data[:], motion["template"][...].T)
        checked.add("SummaryImages")
        # cells: footprints, columns, traces
        ps = ophys["ImageSegmentation"]["PlaneSegmentation"]
        K = r["C"].shape[0]
        assert len(ps) == K > 0
        np.testing.assert_allclose(_dense(ps, H, W), r["A"].toarray(), rtol=1e-6)
        np.testing.assert_array_equal(ps["accepted"][:], r["accepted"])
        for col in ("snr", "r_spatial"):
            np.testing.assert_allclose(ps[col][:], r[col], rtol=1e-6)
        np.testing.assert_allclose(np.stack([ps["centroid_y"][:], ps["centroid_x"][:]], 1), r["centroids"])
        np.testing.assert_allclose(np.stack(ps["ar_coefficients"][:]), r["g"])
        traces = {"RoiResponseSeries": ophys["Fluorescence"]["RoiResponseSeries"],
                  "RoiResponseSeriesRaw": ophys["Fluorescence"]["RoiResponseSeriesRaw"],
                  "DfOverF": ophys["DfOverF"]["RoiResponseSeries"],
                  "Deconvolved": ophys["Deconvolved"]["RoiResponseSeries"]}
        for (name, rrs), key in zip(traces.items(), ("C", "C_raw", "dff", "S"), strict=True):
            np.testing.assert_array_equal(rrs.data[:], r[key].T, err_msg=name)
            assert rrs.rate == 30.0 and list(rrs.rois.data[:]) == list(range(K))
        bg = ophys["BackgroundSegmentation"]["PlaneSegmentation"]
        np.testing.assert_array_equal(np.stack(bg["image_mask"][:]), np.transpose(r["b"], (0, 2, 1)))
        np.testing.assert_array_equal(ophys["Fluorescence"]["Background"].data[:], r["f"].T)
        checked |= {"PlaneSegmentation", "RoiResponseSeries", "DfOverF", "Deconvolved", "BackgroundSegmentation"}
        # photostimulation: trials from the stim log, targets table
        demo = nwb_run / "results" / "demo" / session
        tg = read_targets(demo / "targets.csv")
        trials = find_trials(read_labels(demo / "stim_log.csv", tg, r["C"].shape[1]), 1)
        stim = nwb.intervals["photostimulation"].to_dataframe()
        np.testing.assert_array_equal(stim["start_frame"], trials.start)
        np.testing.assert_array_equal(stim["stop_frame"], trials.stop)
        np.testing.assert_allclose(stim["start_time"], trials.start / 30.0)
        assert [list(t) for t in stim["target_ids"]] == [[int(tg.ids[j]) for j in p] for p in trials.pattern]
        targets = nwb.processing["ogen"]["photostimulation_targets"].to_dataframe()
        assert [str(i) for i in targets.index] == tg.ids
        np.testing.assert_allclose(targets[["y", "x"]].to_numpy(), tg.yx)
        checked |= {"photostimulation", "photostimulation_targets"}
        # classifier metrics and Grad-CAM
        cls = nwb.processing["classification"]
        metrics = json.loads((res / "classifier" / "a1" / "metrics.json").read_text())["sessions"][session]
        row = cls["classifier_metrics"].to_dataframe().iloc[0]
        for key in ("accuracy", "target_accuracy", "missed_as_none", "n_stimulated_frames"):
            assert row[key] == pytest.approx(metrics["test"][key]), key
        assert row["n_trials"] == metrics["n_trials"]
        per = cls["classifier_per_target"].to_dataframe()
        assert {str(i): a for i, a in per["accuracy"].items()} == pytest.approx(
            {k: v["accuracy"] for k, v in metrics["test"]["per_target"].items()})
        conf = cls["classifier_confusion"].to_dataframe()
        assert list(conf["pattern"]) == metrics["test"]["confusion"]["rows"]
        np.testing.assert_array_equal(np.stack(conf["counts"]), metrics["test"]["confusion"]["counts"])
        gc = open_group(res / session / "gradcam.zarr")
        names = gc.attrs["patterns"]
        for i, n in enumerate(names):
            np.testing.assert_array_equal(cls["GradCAM"].images[f"pattern_{n}"].data[:], gc["pattern_maps"][i].T)
        zt = cls["GradCAM_ZNCC"].to_dataframe()
        assert list(zt["pattern"]) == names
        np.testing.assert_array_equal(np.stack(zt["zncc"]), gc["zncc"][...])
        checked |= {"classifier_metrics", "classifier_per_target", "classifier_confusion", "GradCAM", "GradCAM_ZNCC"}
        # every data item of the file was compared above (a new item needs its round trip here)
        present = {*nwb.acquisition, *nwb.intervals, *(n for m in nwb.processing.values() for n in m.data_interfaces)}
        present -= {"ImageSegmentation", "Fluorescence"}  # compared item by item above
        assert present <= checked, present - checked


@pytest.mark.slow
def test_dandi_validate_accepts_an_organised_copy(nwb_run, tmp_path):
    """nwb.movie: copy (a DANDI upload holds the movie: dandi organize carries along only video
    external files), organised by `dandi organize`, then `dandi validate` (offline: no network is
    used) finds no errors; the same copy without a subject's species fails."""
    pytest.importorskip("dandi", reason="dandi comes with the test extra: pip install -e '.[test]'")
    import h5py

    work = copy_run(nwb_run, tmp_path / "run")
    add_metadata(work, movie="copy")
    run_snakemake(work, *NWB_FILES)
    dset = tmp_path / "dandiset"
    dset.mkdir()
    (dset / "dandiset.yaml").write_text("identifier: DANDI:000000\nname: calflow tiny run\n"
                                        "description: calflow NWB export test\n")
    env = {**os.environ, "DANDI_NO_ET": "1"}  # no version check over the network
    dandi = [str(Path(sys.executable).with_name("dandi"))]  # the console script of this environment
    proc = subprocess.run([*dandi, "organize", "-d", str(dset), "--files-mode", "copy",
                           *[str(work / f) for f in NWB_FILES]], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    organised = sorted(p.relative_to(dset).as_posix() for p in dset.rglob("*.nwb"))
    assert len(organised) == 2 and all(p.startswith("sub-a1/sub-a1_ses-") for p in organised), organised
    proc = subprocess.run([*dandi, "validate", str(dset)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "No errors found" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    with h5py.File(dset / organised[0], "a") as h5:  # the check can fail
        del h5["general/subject/species"]
    proc = subprocess.run([*dandi, "validate", str(dset)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and "check_subject_species_exists" in proc.stdout + proc.stderr, (
        proc.stdout + proc.stderr)


@pytest.mark.slow
def test_bad_metadata_stops_the_run_before_any_job(nwb_run, tmp_path):
    work = copy_run(nwb_run, tmp_path / "run")
    before = {f: (work / f).stat().st_mtime_ns for f in NWB_FILES}
    add_metadata(work, sheet={"a1_B": {"session_start_time": "2024-03-04 10:45"}})
    proc = run_snakemake(work, *NWB_FILES, "--forcerun", "nwb", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("calflow: config/sessions.tsv: row 3, field 'session_start_time': '2024-03-04 10:45' has no UTC "
            "offset") in out, out[-2000:]
    assert {f: (work / f).stat().st_mtime_ns for f in NWB_FILES} == before  # nothing rewritten


# ---------------------------------------------------------------- export_nwb directly
@pytest.mark.slow
def test_export_refuses_bad_metadata_and_writes_nothing(tiny_run, tmp_path):
    out = tmp_path / "s.nwb"
    with pytest.raises(CalflowInputError, match="field 'sex': 'female' is not a sex code"):
        export_nwb(tiny_run / "results/a1_A/cnmf.zarr", out, session="a1_A", metadata={"sex": "female"})
    assert list(tmp_path.iterdir()) == []


def _write_source(tmp_path: Path, kind: str, movie: np.ndarray) -> str:
    """The movie as an HDF5 or NWB file; returns its spec as the sessions sheet would give it."""
    import h5py

    if kind.startswith("h5"):
        with h5py.File(tmp_path / "m.h5", "w") as f:
            f["acq/data"] = movie
            f["acq/frame_times"] = np.arange(len(movie), dtype=np.float64)  # not 3-D: ingest ignores it
        return "m.h5#/acq/data" if kind == "h5#name" else "m.h5"
    from datetime import UTC, datetime

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    nwb = NWBFile(session_description="source", identifier="source", session_start_time=datetime(2024, 1, 1, tzinfo=UTC))
    plane = nwb.create_imaging_plane(
        name="plane", optical_channel=OpticalChannel(name="ch", description="green", emission_lambda=510.0),
        description="p", device=nwb.create_device(name="scope"), excitation_lambda=920.0, imaging_rate=30.0,
        indicator="GCaMP6f", location="cortex")
    nwb.add_acquisition(TwoPhotonSeries(name="Scan", data=movie, imaging_plane=plane, rate=30.0, unit="a.u."))
    with NWBHDF5IO(str(tmp_path / "m.nwb"), "w") as io:
        io.write(nwb)
    return "m.nwb#Scan" if kind == "nwb#name" else "m.nwb"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["h5#name", "h5", "nwb#name", "nwb"])
def test_an_hdf5_or_nwb_movie_is_linked_not_copied(tiny_run, tmp_path, kind):
    """An HDF5/NWB source becomes a relative HDF5 external link to the dataset ingest read (no copy),
    through which the NWB file reads the source's frames."""
    import h5py
    from pynwb import NWBHDF5IO

    from calflow.ingest import ingest

    movie = np.random.default_rng(0).poisson(100, size=(120, 64, 64)).astype(np.uint16)
    cwd = Path.cwd()
    os.chdir(tmp_path)  # sheet paths are relative to the working directory
    try:
        spec = _write_source(tmp_path, kind, movie)
        ingest(spec, "raw.zarr", fps=30.0)
        out = tmp_path / "out" / "s.nwb"
        result = export_nwb(tiny_run / "results/a1_A/cnmf.zarr", out, session="s", raw="raw.zarr")
    finally:
        os.chdir(cwd)
    assert "TwoPhotonSeries" in result["items"] and not any("linked" in n for n in result["notes"]), result
    with NWBHDF5IO(str(out), "r") as io:
        twop = io.read().acquisition["TwoPhotonSeries"]
        np.testing.assert_array_equal(twop.data[:], movie)
    with h5py.File(out, "r") as f:
        link = f["acquisition/TwoPhotonSeries"].get("data", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and not Path(link.filename).is_absolute(), link
        assert link.path == ("/acq/data" if kind.startswith("h5") else "/acquisition/Scan/data"), link.path


@pytest.mark.slow
def test_a_failure_while_writing_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    """An error in the middle of the write (here: reading the corrected movie) leaves neither the
    NWB file nor a temporary one."""
    import calflow.cnmf.nwb as nwb_module

    res = tiny_run / "results" / "a1_A"
    real = nwb_module._movie_iterator

    def failing(store, var="movie"):
        it = real(store, var)
        if Path(store).name == "motion.zarr":
            def boom(selection):
                raise OSError("simulated read error in motion.zarr")
            it._get_data = boom
        return it

    monkeypatch.setattr(nwb_module, "_movie_iterator", failing)
    out = tmp_path / "s.nwb"
    with pytest.raises(OSError, match="simulated read error"):
        export_nwb(res / "cnmf.zarr", out, session="a1_A", raw=res / "raw.zarr", motion=res / "motion.zarr",
                   options={"movie": "copy"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_disk_too_small_for_the_file_is_refused_before_writing(tiny_run, tmp_path, monkeypatch):
    """The size estimate bounds the written file from above, and a filesystem with less free space
    than it gets the one-line disk-full error before HDF5 writes anything (HDF5 can crash the process
    when the disk fills mid-write)."""
    import shutil
    from collections import namedtuple

    import calflow.cnmf.nwb as nwb_module

    res = tiny_run / "results" / "a1_A"
    stores = {"raw": res / "raw.zarr", "motion": res / "motion.zarr", "summary": res / "summary.zarr",
              "gradcam": res / "gradcam.zarr", "classifier_metrics": tiny_run / "results/classifier/a1/metrics.json",
              "stim_log": tiny_run / "results/demo/a1_A/stim_log.csv",
              "targets": tiny_run / "results/demo/a1_A/targets.csv"}
    estimates = []
    real = nwb_module._file_bytes
    monkeypatch.setattr(nwb_module, "_file_bytes", lambda nwb: estimates.append(real(nwb)) or estimates[-1])
    out = tmp_path / "ok" / "s.nwb"
    export_nwb(res / "cnmf.zarr", out, session="a1_A", options={"movie": "copy", "compression": 0}, **stores)
    assert out.stat().st_size <= estimates[-1] <= 3 * out.stat().st_size + (1 << 20), (out.stat().st_size, estimates)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - estimates[-1] + 1, estimates[-1] - 1))
    full = tmp_path / "full" / "s.nwb"
    with pytest.raises(CalflowInputError, match=r"no space left on the device while writing it"):
        export_nwb(res / "cnmf.zarr", full, session="a1_A", options={"movie": "copy", "compression": 0}, **stores)
    assert list(full.parent.iterdir()) == []


def test_sparse_helper_matches_cnmf_layout():
    """_dense above reads pixel masks (x, y, w) as the export writes them: pixel = y * W + x."""
    A = sp.csr_matrix(np.array([[0, 2.0, 0, 0, 0, 3.0]]))

    class _PS(list):
        def __getitem__(self, key):
            return [[(1, 0, 2.0), (2, 1, 3.0)]] if key == "pixel_mask" else list.__getitem__(self, key)

    np.testing.assert_array_equal(_dense(_PS([0]), 2, 3), A.toarray())
