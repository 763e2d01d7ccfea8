"""Summary images: streaming results equal in-memory references; PNR and local correlation."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from calflow.errors import CalflowInputError
from calflow.io import MovieWriter
from calflow.summary import SummaryParams, compute_summary, plot_summary


def _movie(n=120, h=24, w=20, seed=0):
    """Noise + one correlated 'cell' (rows 5-9, cols 5-9) with rare large transients."""
    rng = np.random.default_rng(seed)
    mov = rng.normal(1000, 10, (n, h, w))
    trace = np.zeros(n)
    trace[[i for i in (20, 60, 95) if i < n]] = 200
    trace = np.convolve(trace, np.exp(-np.arange(15) / 4))[:n]
    mov[:, 5:10, 5:10] += trace[:, None, None]
    return mov.astype(np.float32)


def _store(path, mov, chunk=32):
    with MovieWriter(path, mov.shape, mov.dtype, fps=10.0, chunk_frames=chunk, attrs={"source": "x.tif"}) as w:
        w.write(mov)
    return path


def _local_corr_reference(mov):
    z = (mov - mov.mean(0)) / mov.std(0)
    n, h, w = mov.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            vals = [np.mean(z[:, y, x] * z[:, y + dy, x + dx])
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                    if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w]
            out[y, x] = np.mean(vals)
    return out


@pytest.mark.parametrize("batch", [7, 500])
def test_streaming_equals_in_memory(tmp_path, batch):
    mov = _movie()
    out = tmp_path / "summary.zarr"
    compute_summary(_store(tmp_path / "m.zarr", mov), out, params={"batch_size": batch})
    g = zarr.open_group(out, mode="r")
    m64 = mov.astype(np.float64)
    np.testing.assert_allclose(g["mean"][:], m64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(g["max"][:], m64.max(0), rtol=1e-6)
    np.testing.assert_allclose(g["std"][:], m64.std(0), rtol=1e-4)
    np.testing.assert_allclose(g["local_corr"][:], _local_corr_reference(m64), atol=1e-4)
    noise = np.sqrt((np.diff(m64, axis=0) ** 2).mean(0) / 2)
    np.testing.assert_allclose(g["noise"][:], noise, rtol=1e-4)
    assert g.attrs["n_frames"] == 120 and g.attrs["fps"] == 10.0 and g.attrs["source"] == "x.tif"


def test_cell_stands_out_in_local_corr_and_pnr(tmp_path):
    out = tmp_path / "summary.zarr"
    compute_summary(_store(tmp_path / "m.zarr", _movie()), out, params={"batch_size": 50})
    g = zarr.open_group(out, mode="r")
    lc, pnr = g["local_corr"][:], g["pnr"][:]
    assert lc[7, 7] > 0.5 and abs(np.median(lc)) < 0.1
    assert pnr[7, 7] > 2 * np.median(pnr) and pnr[7, 7] > 5
    figs = plot_summary(out, tmp_path / "plots", formats=("png", "svg"))
    assert [p.name for p in figs] == ["summary_images.png", "summary_images.svg"]
    assert all(p.stat().st_size > 5000 for p in figs)


def test_errors(tmp_path):
    with pytest.raises(CalflowInputError, match="summary.batch_size"):
        SummaryParams.from_config({"batch_size": 0})
    with pytest.raises(CalflowInputError, match="unknown key"):
        SummaryParams.from_config({"bacth_size": 10})
    out = tmp_path / "summary.zarr"
    with pytest.raises(CalflowInputError, match="at least 2"):
        compute_summary(_store(tmp_path / "one.zarr", _movie(n=1)), out)
    assert not out.exists()
