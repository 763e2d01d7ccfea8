"""calflow.keyframes: activity-ranked and k-means-medoid keyframes, streamed, written to zarr."""

from __future__ import annotations

import numpy as np
import pytest

from calflow.errors import CalflowInputError
from calflow.io import MovieWriter, open_group
from calflow.keyframes import KeyframeParams, compute_keyframes, pick_top, select_keyframes


@pytest.fixture()
def movie(tmp_path):
    rng = np.random.default_rng(0)
    t, h, w = 120, 32, 32
    x = rng.normal(100, 3, size=(t, h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    blob = 60 * np.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / 8)
    active = [20, 55, 90]
    for f in active:
        x[f] += blob
    store = tmp_path / "m.zarr"
    with MovieWriter(store, x.shape, np.float32, fps=10, chunk_frames=25) as wr:
        for a in range(0, t, 30):
            wr.write(x[a:a + 30])
    return store, active, x


def test_activity_picks_the_active_frames(movie):
    store, active, _ = movie
    res = select_keyframes(store, {"method": "activity", "n_keyframes": 3, "batch_size": 16, "min_gap": 5})
    assert list(res["indices"]) == active


def test_kmeans_medoids_are_real_frames(movie):
    store, _, x = movie
    res = select_keyframes(store, {"method": "kmeans", "n_keyframes": 4, "batch_size": 16, "n_components": 5})
    assert 1 <= len(res["indices"]) <= 4 and np.all(np.diff(res["indices"]) > 0)
    np.testing.assert_allclose(res["frames"], x[res["indices"]])
    again = select_keyframes(store, {"method": "kmeans", "n_keyframes": 4, "batch_size": 16, "n_components": 5})
    np.testing.assert_array_equal(res["indices"], again["indices"])


def test_store_layout(movie, tmp_path):
    store, _, x = movie
    out = tmp_path / "kf.zarr"
    info = compute_keyframes(store, out, {"n_keyframes": 5})
    g = open_group(out)
    idx = np.asarray(g["indices"][:])
    assert info["n_keyframes"] == 5 and g["frames"].shape == (5, 32, 32) and g["scores"].shape == (120,)
    np.testing.assert_allclose(np.asarray(g["projection_max"][:]), x[idx].max(axis=0))
    assert g.attrs["method"] == "activity"


def test_pick_top_respects_gap():
    s = np.array([0, 5, 4.9, 0, 0, 3, 0, 0])
    assert list(pick_top(s, 2, 3)) == [1, 5]
    assert list(pick_top(s, 3, 100)) == [1, 2, 5]  # gap impossible: filled with the best remaining


def test_bad_params():
    with pytest.raises(CalflowInputError, match="method"):
        KeyframeParams.from_config({"method": "random"})
    with pytest.raises(CalflowInputError, match="unknown"):
        KeyframeParams.from_config({"k": 3})
