"""Ingest: every supported format -> raw.zarr, and clear errors for bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from calflow import ingest as ingest_mod
from calflow.errors import CalflowInputError
from calflow.ingest import IngestParams, ingest, open_source, sha256_of
from calflow.io import MovieReader, open_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def movie() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4000, size=(53, 24, 20), dtype=np.uint16)


def _ingest_and_read(spec, tmp_path: Path, fps: float = 20.0, **params):
    out = tmp_path / "raw.zarr"
    info = ingest(spec, out, fps=fps, params=params or {"chunk_frames": 10, "read_frames": 7})
    return info, MovieReader(out)


def test_tiff_roundtrip_attrs_and_chunks(tmp_path, movie):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, movie)
    info, r = _ingest_and_read(path, tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    assert r.shape == movie.shape and r.dtype == np.uint16
    assert r.chunk_frames == 10
    assert r.attrs["fps"] == 20.0
    assert r.attrs["source_sha256"] == sha256_of([path])
    assert r.attrs["source"] == str(path)
    ds = open_dataset(tmp_path / "raw.zarr")
    assert ds["movie"].dims == ("time", "y", "x")
    np.testing.assert_allclose(ds["time"].values[:3], [0.0, 0.05, 0.1])
    codecs = zarr.open_array(tmp_path / "raw.zarr" / "movie").metadata.to_dict()["codecs"]
    assert [c["name"] for c in codecs][-2:] == ["blosc", "crc32c"]  # every chunk checksummed
    assert codecs[-2]["configuration"]["cname"] == "zstd"
    assert info["frames"] == 53


@pytest.mark.parametrize("kw", [{"bigtiff": True}, {"compression": "zlib"}, {"compression": "packbits"}, {"imagej": True}])
def test_tiff_variants(tmp_path, movie, kw):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, movie, **kw)
    _, r = _ingest_and_read(path, tmp_path)
    np.testing.assert_array_equal(r[:], movie)


def test_multi_file_tiff_glob_folder_and_list(tmp_path, movie):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, a in enumerate(range(0, 53, 20)):
        tifffile.imwrite(folder / f"part_{i:02d}.tif", movie[a : a + 20])
    for spec in (folder, str(folder / "part_*.tif"), ";".join(str(p) for p in sorted(folder.glob("*.tif")))):
        _, r = _ingest_and_read(spec, tmp_path)
        np.testing.assert_array_equal(r[:], movie)


def test_multi_file_mismatch_is_reported(tmp_path, movie):
    tifffile.imwrite(tmp_path / "a.tif", movie)
    tifffile.imwrite(tmp_path / "b.tif", movie[:, :10])
    with pytest.raises(CalflowInputError, match=r"b\.tif.*differs from the first file"):
        _ingest_and_read(f"{tmp_path / 'a.tif'};{tmp_path / 'b.tif'}", tmp_path)


def test_hdf5_named_and_auto(tmp_path, movie):
    import h5py

    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("imaging/data", data=movie, chunks=(5, 24, 20))
        f.create_dataset("other", data=np.zeros((3, 3)))
    _, r = _ingest_and_read(f"{path}#imaging/data", tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    _, r = _ingest_and_read(path, tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    with pytest.raises(CalflowInputError, match="no dataset 'nope'"):
        _ingest_and_read(f"{path}#nope", tmp_path)


def test_nwb_two_photon_series(tmp_path, movie):
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    nwb = NWBFile("test", "id", datetime(2026, 1, 1, tzinfo=UTC))
    dev = nwb.create_device("scope")
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel(name="ch", description="green", emission_lambda=510.0),
        description="plane",
        device=dev,
        excitation_lambda=920.0,
        imaging_rate=30.0,
        indicator="GCaMP6",
        location="cortex",
    )
    nwb.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", data=movie, imaging_plane=plane, rate=30.0, unit="n.a."))
    path = tmp_path / "m.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    src = open_source(path)
    assert src.fps == 30.0
    src.close()
    _, r = _ingest_and_read(path, tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    with pytest.raises(CalflowInputError, match="no TwoPhotonSeries 'x'"):
        _ingest_and_read(f"{path}#x", tmp_path)


def test_zarr_array_group_and_npy(tmp_path, movie):
    zarr.save_array(tmp_path / "a.zarr", movie)
    _, r = _ingest_and_read(tmp_path / "a.zarr", tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("frames", data=movie)
    _, r = _ingest_and_read(f"{tmp_path / 'g.zarr'}#frames", tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    np.save(tmp_path / "m.npy", movie.astype(np.float64))
    _, r = _ingest_and_read(tmp_path / "m.npy", tmp_path)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r[:], movie)


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.97])
@pytest.mark.parametrize("kw", [{}, {"compression": "zlib"}, {"metadata": None}])
def test_truncated_tiff_is_reported_and_leaves_no_output(tmp_path, movie, frac, kw):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, movie, **kw)
    data = full.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: int(len(data) * frac)])
    out = tmp_path / "raw.zarr"
    with pytest.raises(CalflowInputError, match=r"cut\.tif.*(truncated|corrupt)"):
        ingest(bad, out, fps=10)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.zarr")]


def test_garbage_file_is_reported(tmp_path):
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(CalflowInputError, match=r"junk\.tif: not a readable TIFF"):
        ingest(bad, tmp_path / "raw.zarr", fps=10)


@pytest.mark.parametrize("shape", [(4, 3, 24, 20), (24, 20, 3, 2)])
def test_wrong_dimensionality(tmp_path, shape):
    np.save(tmp_path / "m.npy", np.zeros(shape, np.uint16))
    with pytest.raises(CalflowInputError, match=r"m\.npy: movie has shape .* expected 3 dimensions"):
        ingest(tmp_path / "m.npy", tmp_path / "raw.zarr", fps=10)
    assert not (tmp_path / "raw.zarr").exists()


def test_nan_frames_error_names_frames_and_fix(tmp_path, movie):
    m = movie.astype(np.float32)
    m[17, 3, 4] = np.nan
    m[40] = np.nan
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "raw.zarr"
    with pytest.raises(CalflowInputError, match=r"m\.npy: 2 frame\(s\) contain NaN \(frames 17, 40\).*nan_policy"):
        ingest(tmp_path / "m.npy", out, fps=10, params={"read_frames": 8})
    assert not out.exists()
    ingest(tmp_path / "m.npy", out, fps=10, params={"read_frames": 8, "nan_policy": "fill_previous"})
    r = MovieReader(out)
    assert not np.isnan(r[:]).any()
    assert r[17][3, 4] == m[16][3, 4]
    np.testing.assert_array_equal(r[40], r[39])


def test_failure_midway_keeps_previous_output(tmp_path, movie, monkeypatch):
    np.save(tmp_path / "m.npy", movie)
    out = tmp_path / "raw.zarr"
    ingest(tmp_path / "m.npy", out, fps=10)
    before = MovieReader(out)[:]
    calls = {"n": 0}
    real_read = ingest_mod.ArraySource.read

    def failing_read(self, a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CalflowInputError("simulated read failure", file="m.npy")
        return real_read(self, a, b)

    monkeypatch.setattr(ingest_mod.ArraySource, "read", failing_read)
    with pytest.raises(CalflowInputError, match="simulated"):
        ingest(tmp_path / "m.npy", out, fps=10, params={"read_frames": 10})
    np.testing.assert_array_equal(MovieReader(out)[:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "raw.zarr"]


def test_reads_in_bounded_blocks(tmp_path, movie, monkeypatch):
    np.save(tmp_path / "m.npy", movie)
    sizes: list[int] = []
    real_read = ingest_mod.ArraySource.read
    monkeypatch.setattr(ingest_mod.ArraySource, "read", lambda self, a, b: sizes.append(b - a) or real_read(self, a, b))
    ingest(tmp_path / "m.npy", tmp_path / "raw.zarr", fps=10, params={"read_frames": 6})
    assert max(sizes) == 6 and sum(sizes) == movie.shape[0]


def test_bad_params_and_missing_file(tmp_path, movie):
    with pytest.raises(CalflowInputError, match=r"unknown key\(s\) in the ingest section"):
        IngestParams.from_config({"chunk": 3})
    with pytest.raises(CalflowInputError, match="nan_policy"):
        IngestParams.from_config({"nan_policy": "ignore"})
    with pytest.raises(CalflowInputError, match=r"nope\.tif: the movie file does not exist"):
        ingest(tmp_path / "nope.tif", tmp_path / "raw.zarr", fps=10)
    with pytest.raises(CalflowInputError, match="unknown movie format '.avi'"):
        (tmp_path / "m.avi").write_bytes(b"x")
        ingest(tmp_path / "m.avi", tmp_path / "raw.zarr", fps=10)
    np.save(tmp_path / "m.npy", movie)
    with pytest.raises(CalflowInputError, match="fps must be a positive"):
        ingest(tmp_path / "m.npy", tmp_path / "raw.zarr", fps=0)


@pytest.mark.parametrize("name", ["sima-example/example.tif", "neurofinder-left/movie.tif"])
def test_real_movies(tmp_path, name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is not beside the checkout)")
    info, r = _ingest_and_read(path, tmp_path, fps=7.5)
    with tifffile.TiffFile(path) as tif:
        first = tif.pages[0].asarray()
        n = len(tif.pages)
    assert r.shape[0] == n and info["frames"] == n
    np.testing.assert_array_equal(r[0], first)


def test_npy_variants_and_truncation(tmp_path, movie):
    np.save(tmp_path / "f.npy", np.asfortranarray(movie))
    _, r = _ingest_and_read(tmp_path / "f.npy", tmp_path)
    np.testing.assert_array_equal(r[:], movie)
    np.save(tmp_path / "m.npy", movie)
    data = (tmp_path / "m.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalflowInputError, match=r"cut\.npy: not a readable \.npy file.*truncated"):
        ingest(tmp_path / "cut.npy", tmp_path / "raw2.zarr", fps=10)
    assert not (tmp_path / "raw2.zarr").exists()


def test_source_paths_expands_like_open_source(tmp_path, movie):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"p{i}.tif", movie[:5])
    expected = [tmp_path / f"p{i}.tif" for i in range(3)]
    assert ingest_mod.source_paths(f"{tmp_path}/p*.tif") == expected
    assert ingest_mod.source_paths(tmp_path) == expected
    assert ingest_mod.source_paths(f"{tmp_path / 'a.h5'}#/data") == [tmp_path / "a.h5"]
    assert ingest_mod.source_paths("results/demo/s/movie.tif") == [Path("results/demo/s/movie.tif")]
    with pytest.raises(CalflowInputError, match="the pattern matches no file"):
        ingest_mod.source_paths(f"{tmp_path}/q*.tif")


def test_several_non_tiff_files_are_refused(tmp_path, movie):
    np.save(tmp_path / "a.npy", movie)
    np.save(tmp_path / "b.npy", movie)
    with pytest.raises(CalflowInputError, match="several files are supported for TIFF only"):
        ingest(f"{tmp_path / 'a.npy'};{tmp_path / 'b.npy'}", tmp_path / "raw.zarr", fps=10)


def test_movie_store_is_the_layout_xarray_writes(tmp_path):
    """MovieWriter makes its stores with zarr alone (no dask/xarray import at start-up); every
    zarr.json must equal what ``xarray.Dataset.to_zarr`` writes for the same movie, so xarray users
    and older calflow stores read them alike."""
    import subprocess
    import sys

    import xarray as xr

    from calflow.io import MOVIE_VAR, MovieWriter, store_codecs

    data = np.arange(250 * 6 * 5, dtype=np.uint16).reshape(250, 6, 5)
    with MovieWriter(tmp_path / "ours.zarr", data.shape, data.dtype, fps=20.0, chunk_frames=100,
                     attrs={"source": "x.tif"}) as w:
        w.write(data)
    ds = xr.Dataset({MOVIE_VAR: (("time", "y", "x"), data)},
                    coords={"time": ("time", np.arange(250) / 20.0, {"units": "s"})},
                    attrs={"fps": 20.0, "source": "x.tif"})
    ds.to_zarr(tmp_path / "xr.zarr", zarr_format=3, consolidated=False,
               encoding={MOVIE_VAR: {"chunks": (100, 6, 5), "compressors": store_codecs(), "fill_value": None}})
    for meta in ("zarr.json", "time/zarr.json", f"{MOVIE_VAR}/zarr.json"):
        ours = json.loads((tmp_path / "ours.zarr" / meta).read_text())
        ours.get("attributes", {}).pop("calflow_all_chunks_written", None)
        assert ours == json.loads((tmp_path / "xr.zarr" / meta).read_text()), meta
    back = xr.open_zarr(tmp_path / "ours.zarr", consolidated=False)
    np.testing.assert_array_equal(back[MOVIE_VAR].values, data)
    assert back["time"].attrs["units"] == "s" and float(back["time"][-1]) == 249 / 20.0
    code = ("import sys, numpy as np; from calflow.io import MovieWriter; "
            f"w = MovieWriter({str(tmp_path / 'lean.zarr')!r}, (3, 4, 4), 'uint8', fps=1.0); "
            "w.write(np.zeros((3, 4, 4), np.uint8)); w.close(); "
            "print(sorted(m for m in ('dask', 'xarray') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
