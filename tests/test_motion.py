"""Motion correction: accuracy against known shifts, the stage's store, streaming, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from calflow.errors import CalflowInputError
from calflow.io import MovieWriter
from calflow.motion import MotionParams, Registration, build_template, correct_motion, crispness
from calflow.motion.plots import plot_motion

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# synthetic movies with known motion (shift convention: frame_t(y, x) = template(y - dy, x - dx))
# ---------------------------------------------------------------------------------------------


def _scene(h: int, w: int, rng: np.random.Generator, density: float = 1 / 100) -> np.ndarray:
    """Smooth background + Gaussian blob cells (2-3.5 px), about ``density`` cells per px^2."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6) * 30 + 100
    for cy, cx in rng.uniform(0, [h, w], (int(h * w * density), 2)):
        r = rng.uniform(2, 3.5)
        img += rng.uniform(50, 150) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return img


def _fourier_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fy * dy + fx * dx))))


def rigid_movie(n=100, h=64, w=64, max_shift=4.0, noise=5.0, seed=0):
    """(frames float32 (n, h, w), true shifts (n, 2)); shifted crops of a larger scene."""
    rng = np.random.default_rng(seed)
    pad = 16
    scene = _scene(h + 2 * pad, w + 2 * pad, rng)
    shifts = rng.uniform(-max_shift, max_shift, (n, 2))
    frames = np.stack([_fourier_shift(scene, *s)[pad : pad + h, pad : pad + w] for s in shifts])
    frames += rng.normal(0, noise, frames.shape)
    return frames.astype(np.float32), shifts


def _pattern(amp, h, w, yy, xx):
    """Smooth non-rigid field (dy, dx) in px: wavelengths 2.5-3x the frame, amplitudes ``amp``."""
    dy = amp[0] * np.sin(2 * np.pi * yy / (2.5 * h) + 0.5) * np.cos(2 * np.pi * xx / (3 * w))
    dx = amp[1] * np.cos(2 * np.pi * yy / (3 * h)) * np.sin(2 * np.pi * xx / (2.5 * w) + 1.0)
    return dy, dx


def nonrigid_movie(n=100, h=96, w=96, max_shift=3.0, amp=1.5, noise=5.0, seed=0):
    """Frames with rigid + smooth non-rigid motion, and ``truth(t, y, x)`` -> (2, ...) displacement.

    The truth is in template coordinates: where the template point (y, x) appears in frame t,
    the fixed point d = D_t(p + d) of the generative field D_t (frame_t(p) = scene(p - D_t(p))).
    """
    rng = np.random.default_rng(seed)
    pad = 16
    scene = _scene(h + 2 * pad, w + 2 * pad, rng)
    rigid = rng.uniform(-max_shift, max_shift, (n, 2))
    amps = rng.uniform(-amp, amp, (n, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    frames = np.empty((n, h, w))
    for t in range(n):
        dy, dx = _pattern(amps[t], h, w, yy, xx)
        coords = [yy - dy - rigid[t, 0] + pad, xx - dx - rigid[t, 1] + pad]
        frames[t] = ndimage.map_coordinates(scene, coords, order=3, mode="reflect")
    frames += rng.normal(0, noise, frames.shape)

    def truth(t, y, x):
        d = np.zeros((2,) + np.broadcast(y, x).shape)
        for _ in range(30):
            fy, fx = _pattern(amps[t], h, w, y + d[0], x + d[1])
            d = np.stack([fy + rigid[t, 0], fx + rigid[t, 1]])
        return d

    return frames.astype(np.float32), truth


def _rmse(est: np.ndarray, true: np.ndarray) -> float:
    """RMSE of the vector error after removing its constant offset (the template's position)."""
    err = (est - true).reshape(-1, 2)
    err = err - err.mean(axis=0)
    return float(np.sqrt((err**2).sum(axis=1).mean()))


def _write_raw(path: Path, frames: np.ndarray, fps: float = 30.0, chunk: int = 32) -> Path:
    with MovieWriter(path, frames.shape, frames.dtype, fps=fps, chunk_frames=chunk,
                     attrs={"source": "synthetic", "session": "t"}) as w:
        w.write(frames)
    return path


def _patch_truth(store: Path, truth, n: int) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(store, mode="r")
    cy, cx = np.meshgrid(np.asarray(g["patch_centers_y"]), np.asarray(g["patch_centers_x"]), indexing="ij")
    true = np.stack([truth(t, cy, cx) for t in range(n)]).transpose(0, 2, 3, 1)
    return np.asarray(g["patch_shifts"]), true


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


def test_rigid_subpixel_accuracy(tmp_path):
    frames, shifts = rigid_movie()
    store = _write_raw(tmp_path / "raw.zarr", frames)
    correct_motion(store, tmp_path / "motion.zarr", params={"piecewise": False, "max_shift": 8}, progress=False)
    est = np.asarray(zarr.open_group(tmp_path / "motion.zarr", mode="r")["rigid_shifts"])
    rmse = _rmse(est, shifts)
    print(f"rigid RMSE {rmse:.4f} px")
    assert rmse < 0.1
    # the sign convention: estimated shifts follow the true ones, not their negatives
    assert np.corrcoef(est[:, 0], shifts[:, 0])[0, 1] > 0.99


def test_piecewise_shift_field_accuracy(tmp_path):
    n = 100
    frames, truth = nonrigid_movie(n=n)
    store = _write_raw(tmp_path / "raw.zarr", frames)
    params = {"piecewise": True, "max_shift": 8, "patch_size": 48, "overlap": 24, "max_deviation": 3}
    stats = correct_motion(store, tmp_path / "motion.zarr", params=params, progress=False)
    est, true = _patch_truth(tmp_path / "motion.zarr", truth, n)
    assert est.shape == (n, 3, 3, 2)
    rmse = _rmse(est, true)
    # a rigid-only estimate of the same field, for scale: piecewise must beat it clearly
    rigid = np.asarray(zarr.open_group(tmp_path / "motion.zarr", mode="r")["rigid_shifts"])
    rmse_rigid = _rmse(np.broadcast_to(rigid[:, None, None, :], true.shape), true)
    print(f"piecewise field RMSE {rmse:.4f} px (rigid-only {rmse_rigid:.4f} px)")
    assert rmse < 0.3
    assert rmse < 0.5 * rmse_rigid
    assert stats["crispness_after"] > stats["crispness_before"]


@pytest.mark.parametrize("nonrigid", [False, True])
def test_accuracy_on_simulator_movie(tmp_path, nonrigid):
    """calflow.simulate's realistic movie (Poisson noise, sparse activity, rigid random walk and,
    with ``nonrigid``, its default 4 x 4-control-point deformation): patch-shift field RMSE < 0.3
    px at the patch centres; with rigid motion only, rigid RMSE < 0.1 px."""
    sim = pytest.importorskip("calflow.simulate")
    if not all(hasattr(sim, k) for k in ("SimParams", "simulate", "render_frames", "true_displacement")):
        pytest.skip("calflow.simulate lacks SimParams/simulate/render_frames/true_displacement")
    n = 100
    truth = sim.simulate(sim.SimParams(n_frames=n, height=96, width=96, n_cells=40, nonrigid=nonrigid), seed=3)
    store = _write_raw(tmp_path / "raw.zarr", sim.render_frames(truth, 0, n))
    params = {"piecewise": True, "max_shift": 8, "patch_size": 48, "overlap": 24, "max_deviation": 3}
    correct_motion(store, tmp_path / "motion.zarr", params=params, progress=False)
    g = zarr.open_group(tmp_path / "motion.zarr", mode="r")
    cy, cx = np.meshgrid(np.asarray(g["patch_centers_y"]), np.asarray(g["patch_centers_x"]), indexing="ij")
    pts = np.stack([cy.ravel(), cx.ravel()], axis=1)
    true = sim.true_displacement(truth, np.arange(n), pts).reshape(n, *cy.shape, 2)
    rigid_rmse = _rmse(np.asarray(g["rigid_shifts"]), true.mean(axis=(1, 2)))
    patch_rmse = _rmse(np.asarray(g["patch_shifts"]), true)
    rigid_only = _rmse(np.broadcast_to(np.asarray(g["rigid_shifts"])[:, None, None, :], true.shape), true)
    print(f"simulator (nonrigid={nonrigid}): rigid RMSE {rigid_rmse:.4f} px, patch RMSE {patch_rmse:.4f} px"
          f" (rigid shift as the field: {rigid_only:.4f} px)")
    assert patch_rmse < 0.3
    if nonrigid:
        assert patch_rmse < 0.7 * rigid_only
    else:
        assert rigid_rmse < 0.1


def test_registration_kernel_recovers_known_patch_shifts():
    """Unit level: patch shifts of a purely rigid movie equal the rigid shift in every patch."""
    frames, shifts = rigid_movie(n=20, h=96, w=96, noise=0.0, seed=1)
    p = MotionParams(piecewise=True, max_shift=8, patch_size=48, overlap=24, max_deviation=3)
    template = build_template(frames, p, CPU)
    reg = Registration(template, p, CPU)
    x = torch.from_numpy(frames)
    rigid, _ = reg.rigid(x)
    patch = reg.piecewise(x, rigid).numpy()
    assert _rmse(patch, np.broadcast_to(shifts[:, None, None, :], patch.shape)) < 0.15


# ---------------------------------------------------------------------------------------------
# the stage: store layout, streaming, determinism, errors
# ---------------------------------------------------------------------------------------------


def test_store_layout_attrs_and_plots(tmp_path):
    frames, _ = rigid_movie(n=40)
    raw = _write_raw(tmp_path / "raw.zarr", np.clip(frames, 0, None).astype(np.uint16), fps=15.0)
    out = tmp_path / "res" / "motion.zarr"
    params = {"piecewise": True, "max_shift": 8, "patch_size": 32, "overlap": 16, "max_deviation": 3}
    stats = correct_motion(raw, out, params=params, progress=False)
    g = zarr.open_group(out, mode="r")
    assert g["movie"].shape == (40, 64, 64) and g["movie"].dtype == np.uint16
    assert g["rigid_shifts"].shape == (40, 2)
    assert g["patch_shifts"].shape == (40, 3, 3, 2)
    assert g["patch_centers_y"].shape == (3,) and g["patch_centers_x"].shape == (3,)
    np.testing.assert_allclose(np.asarray(g["patch_centers_y"]), [15.5, 31.5, 47.5])
    for name in ("template", "mean_before", "mean_after"):
        assert g[name].shape == (64, 64)
    assert g["corr_with_template"].shape == g["corr_with_template_before"].shape == (40,)
    assert np.mean(g["corr_with_template"]) > np.mean(g["corr_with_template_before"])
    attrs = dict(g.attrs)
    assert attrs["fps"] == 15.0 and attrs["source"] == "synthetic" and attrs["session"] == "t"
    assert attrs["crispness_after"] > attrs["crispness_before"] == stats["crispness_before"]
    assert attrs["motion_params"]["patch_size"] == 32 and "content" in attrs["shift_convention"]
    assert [p.name for p in out.parent.iterdir()] == ["motion.zarr"]  # no temporary left behind
    # float32 output keeps the interpolated values
    out32 = tmp_path / "m32.zarr"
    correct_motion(raw, out32, params={**params, "output_dtype": "float32"}, progress=False)
    assert zarr.open_group(out32, mode="r")["movie"].dtype == np.float32

    pngs = plot_motion(out, tmp_path / "plots")
    assert [p.name for p in pngs] == ["motion_shifts.png", "motion_correlation.png", "motion_mean_images.png"]
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_streaming_batches_and_determinism(tmp_path):
    frames, _ = rigid_movie(n=50, seed=2)
    raw = _write_raw(tmp_path / "raw.zarr", frames, chunk=16)
    base = {"piecewise": True, "max_shift": 8, "patch_size": 32, "overlap": 16, "template_frames": 50}
    correct_motion(raw, tmp_path / "a.zarr", params={**base, "batch_size": 7}, progress=False)
    correct_motion(raw, tmp_path / "b.zarr", params={**base, "batch_size": 50}, progress=False)
    correct_motion(raw, tmp_path / "c.zarr", params={**base, "batch_size": 7}, progress=False)
    a, b, c = (zarr.open_group(tmp_path / f"{k}.zarr", mode="r") for k in "abc")
    # batch size changes only float rounding, never the result
    np.testing.assert_allclose(np.asarray(a["patch_shifts"]), np.asarray(b["patch_shifts"]), atol=1e-3)
    np.testing.assert_allclose(np.asarray(a["movie"]), np.asarray(b["movie"]), atol=1e-2)
    # same input and params -> identical output
    np.testing.assert_array_equal(np.asarray(a["movie"]), np.asarray(c["movie"]))
    np.testing.assert_array_equal(np.asarray(a["rigid_shifts"]), np.asarray(c["rigid_shifts"]))


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"max_shift": -1}, "motion.max_shift"),
        ({"patch_size": 32, "overlap": 32}, "motion.overlap"),
        ({"device": "gpu"}, "motion.device"),
        ({"piecewise": "yes"}, "motion.piecewise"),
        ({"output_dtype": "uint8"}, "motion.output_dtype"),
        ({"batch_size": 2.5}, "motion.batch_size"),
        ({"max_shfit": 3}, "max_shfit"),
    ],
)
def test_params_validation_names_the_key(config, key):
    with pytest.raises(CalflowInputError) as err:
        MotionParams.from_config(config)
    assert key in str(err.value) and "Fix:" in str(err.value)


def test_bad_inputs_leave_no_output(tmp_path):
    out = tmp_path / "motion.zarr"
    with pytest.raises(CalflowInputError, match="does not exist"):
        correct_motion(tmp_path / "missing.zarr", out, progress=False)
    frames, _ = rigid_movie(n=10, h=40, w=40)
    raw = _write_raw(tmp_path / "raw.zarr", frames)
    with pytest.raises(CalflowInputError, match="patch_size"):
        correct_motion(raw, out, params={"patch_size": 64}, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr"]


def test_crispness_prefers_sharp_images():
    img = _scene(64, 64, np.random.default_rng(0))
    assert crispness(img) > crispness(ndimage.gaussian_filter(img, 1.0)) > 0


# ---------------------------------------------------------------------------------------------
# real movies: the corrected mean image is crisper than the raw one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "frames", "params"),
    [
        ("optinist-mouse2p/movie.tiff", slice(0, 600), {"piecewise": True}),
        ("neurofinder-left/movie.tif", slice(0, 120), {"piecewise": True}),
    ],
)
def test_real_movie_gets_crisper(tmp_path, rel, frames, params):
    tifffile = pytest.importorskip("tifffile")
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"{path} absent: the shared real-data folder is not next to the repo")
    with tifffile.TiffFile(path) as tif:
        n = len(tif.pages)
        idx = range(*frames.indices(n))
        movie = tif.asarray(key=idx)
    raw = _write_raw(tmp_path / "raw.zarr", movie, chunk=100)
    stats = correct_motion(raw, tmp_path / "motion.zarr", params=params, progress=False)
    print(rel, {k: stats[k] for k in ("crispness_before", "crispness_after", "corr_with_template_before_mean",
                                      "corr_with_template_after_mean", "frames_per_s")})
    assert stats["crispness_after"] > stats["crispness_before"]
    assert stats["corr_with_template_after_mean"] > stats["corr_with_template_before_mean"]


def test_window_warning_flags_a_search_radius_that_eats_the_template():
    from calflow.motion import window_warning

    msg = window_warning(15, 64, 64, "raw.zarr")
    assert msg is not None and "raw.zarr" in msg and "motion.max_shift = 15" in msg
    assert window_warning(6, 64, 64) is None
    assert window_warning(15, 512, 512) is None


def test_demo_config_motion_search_fits_the_demo_frames():
    """The shipped config's max_shift leaves the demo's frames a usable template window (with 15 on
    64 x 64 px the demo's shifts locked onto the wrong structure: 12-16 px for <= 3 px of motion)."""
    import yaml

    from calflow.motion import window_warning

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    h, w = cfg["demo"]["sim"]["height"], cfg["demo"]["sim"]["width"]
    assert window_warning(cfg["motion"]["max_shift"], h, w) is None
