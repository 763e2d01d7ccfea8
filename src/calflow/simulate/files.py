"""Files of a simulated session.

``ground_truth.npz`` (:func:`save_ground_truth`, :func:`load_ground_truth`: plain arrays, no
pickles) and the session directory (:func:`write_session`: ``movie.tif`` streamed block by block
and the ground-truth files next to it, :data:`SESSION_FILES`). ``docs/simulate.md`` gives every
file, unit and shape.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from calflow import __version__
from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.simulate.model import _stim_drive, simulate
from calflow.simulate.params import SimParams
from calflow.simulate.render import iter_movie
from calflow.simulate.truth import GroundTruth

log = logging.getLogger("calflow.simulate")

#: Files written by :func:`write_session` (name -> key in the returned dict).
SESSION_FILES = {
    "movie": "movie.tif",
    "ground_truth": "ground_truth.npz",
    "stim_log": "stim_log.csv",
    "targets": "targets.csv",
    "masks": "masks.tif",
    "params": "params.json",
}
GENERATOR = "calflow.simulate"


def _gt_arrays(truth: GroundTruth) -> dict[str, np.ndarray]:
    """Every ground-truth array except the dense footprints (documented in docs/simulate.md)."""
    out = _gt_arrays_base(truth)
    if truth.present is not None:  # only with turnover, so sessions without it keep their files
        out["present"] = np.asarray(truth.present, bool)
    return out


def _gt_arrays_base(truth: GroundTruth) -> dict[str, np.ndarray]:
    p = truth.params
    T = truth.n_frames
    gy, gx = p.nonrigid_grid
    cy, cx = np.meshgrid(truth.control_y, truth.control_x, indexing="ij")
    return {
        "centers": truth.centers,
        "radii": truth.radii,
        "semi_axes": truth.semi_axes,
        "angles": truth.angles,
        "overlap_partner": truth.overlap_partner,
        "f0": truth.f0,
        "spikes": truth.spikes,
        "calcium": truth.calcium,
        "rate_hz": truth.rate_hz,
        "g": truth.g,
        "tau_rise_s": truth.tau_rise_s,
        "tau_decay_s": truth.tau_decay_s,
        "spike_amplitude": truth.spike_amplitude,
        "spike_weight": truth.spike_weight,
        "population": truth.population,
        "neuropil_spatial": np.ascontiguousarray(truth.neuropil_spatial),
        "neuropil_trace": truth.neuropil_trace,
        "background_spatial": np.ascontiguousarray(truth.background_spatial),
        "background_temporal": truth.bg_traces,
        "baseline": np.float64(p.baseline),
        "world_pad": np.int64(truth.pad),
        "neuropil_spatial_world": truth.neuropil_map,
        "background_spatial_world": truth.bg_maps,
        "rigid_shifts": truth.rigid_shifts,
        "nonrigid_grid": truth.nonrigid_grid,
        "control_points_y": truth.control_y,
        "control_points_x": truth.control_x,
        "control_points_yx": np.stack([cy, cx], axis=-1).reshape(gy, gx, 2),
        "W": truth.W,
        "w_gain": np.float64(p.w_gain),
        "target_cells": truth.target_cells,
        "patterns": truth.patterns,
        "trial_start": truth.trial_start,
        "trial_stop": truth.trial_stop,
        "trial_pattern": truth.trial_pattern,
        "trial_block": truth.trial_block,
        "stim": truth.stim,
        "delay_frames": np.int64(truth.delay_frames),
        "fps": np.float64(p.fps),
        "seed": np.int64(truth.seed),
        "anatomy_seed": np.int64(truth.seed if truth.anatomy_seed is None else truth.anatomy_seed),
        "shape": np.array(truth.shape, np.int64),
        "photons_per_unit": np.float64(p.photons_per_unit),
        "gain": np.float64(p.gain),
        "offset": np.float64(p.offset),
        "read_noise": np.float64(p.read_noise),
        "params_json": np.array(json.dumps(p.to_dict(), sort_keys=True)),
        # per-session nuisance (docs/simulate.md, "Per-session nuisance")
        "expression_scale": np.float64(p.expression_scale),
        "cell_scale": _or(truth.cell_scale, np.ones(T, np.float32)),
        "bleach": _or(truth.bleach, np.ones(T, np.float32)),
        "artifact": _or(truth.artifact, np.zeros(T, np.float32)),
        "stim_drive": _or(truth.stim_drive, _stim_drive(p, truth.centers, truth.target_cells)[0]),
        "fov_offset": _or(truth.fov_offset, np.zeros(2)),
        "fov_rotation_deg": np.float64(truth.fov_rotation_deg),
        "fov_centers": truth.fov_centers,
    }


def _or(value: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if value is None else value


def save_ground_truth(truth: GroundTruth, path: str | Path) -> Path:
    """Write ``ground_truth.npz`` (deflate-compressed), streaming the dense (K, Y, X) footprints.

    Peak memory is one (Y, X) frame, not K*Y*X. ``np.load(path)["footprints"]`` reads them back.
    """
    path = Path(path)
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in _gt_arrays(truth).items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        Y, X = truth.params.height, truth.params.width
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (truth.n_cells, Y, X)}
        with zf.open("footprints.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for k in range(truth.n_cells):
                f.write(truth.footprint(k).astype("<f4").tobytes())
    return path


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a ``ground_truth.npz`` back into a :class:`GroundTruth` that renders identically.

    The footprints are streamed cell by cell (no K*Y*X array is allocated).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files if k != "footprints"}
        params = SimParams.from_dict(json.loads(str(a["params_json"])), source=path)
        K = a["centers"].shape[0]
        Y, X = params.height, params.width
        boxes = []
        with zipfile.ZipFile(path) as zf, zf.open("footprints.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            if tuple(shape) != (K, Y, X):
                raise ValueError(f"footprints shape {shape} != {(K, Y, X)}")
            for _ in range(K):
                fp = np.frombuffer(f.read(Y * X * dtype.itemsize), dtype=dtype).reshape(Y, X)
                ys, xs = np.nonzero(fp)
                if ys.size == 0:
                    boxes.append((0, 0, np.zeros((1, 1), np.float32)))
                    continue
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                boxes.append((int(y0), int(x0), np.array(fp[y0:y1, x0:x1], np.float32)))
    except CalflowInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zip/npz/json raise many types
        raise CalflowInputError(
            f"not a readable calflow ground_truth.npz ({type(err).__name__}: {err})",
            file=path,
            fix="regenerate it with `calflow simulate`",
        ) from err
    return GroundTruth(
        params=params, seed=int(a["seed"]), centers=a["centers"], radii=a["radii"], semi_axes=a["semi_axes"],
        angles=a["angles"], overlap_partner=a["overlap_partner"], f0=a["f0"], boxes=boxes, rate_hz=a["rate_hz"],
        spikes=a["spikes"], calcium=a["calcium"], g=a["g"], tau_rise_s=a["tau_rise_s"],
        tau_decay_s=a["tau_decay_s"], spike_amplitude=a["spike_amplitude"], spike_weight=a["spike_weight"],
        population=a["population"], pad=int(a["world_pad"]), neuropil_map=a["neuropil_spatial_world"],
        neuropil_trace=a["neuropil_trace"], bg_maps=a["background_spatial_world"],
        bg_traces=a["background_temporal"], rigid_shifts=a["rigid_shifts"], nonrigid_grid=a["nonrigid_grid"],
        control_y=a["control_points_y"], control_x=a["control_points_x"], W=a["W"],
        target_cells=a["target_cells"], patterns=a["patterns"], trial_start=a["trial_start"],
        trial_stop=a["trial_stop"], trial_pattern=a["trial_pattern"], trial_block=a["trial_block"],
        stim=a["stim"], delay_frames=int(a["delay_frames"]),
        anatomy_seed=int(a["anatomy_seed"]) if "anatomy_seed" in a else None,
        cell_scale=a.get("cell_scale"), bleach=a.get("bleach"), artifact=a.get("artifact"),
        stim_drive=a.get("stim_drive"), fov_offset=a.get("fov_offset"),
        fov_rotation_deg=float(a["fov_rotation_deg"]) if "fov_rotation_deg" in a else 0.0,
        present=a.get("present"),
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[Any]] | list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_movie(truth: GroundTruth, path: Path, block_frames: int | None, threads: int | None,
                 progress: bool = False) -> float:
    """Stream the movie into a (T, Y, X) uint16 TIFF; returns the seconds it took."""
    T, Y, X = truth.shape
    nbytes = T * Y * X * 2
    bigtiff = nbytes + 4096 * (T + 1) > 2**31 - 2**20
    t0 = time.perf_counter()
    log_every = max(1, T // 10)

    def pages() -> Iterator[np.ndarray]:
        next_log = log_every
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=T, desc="simulate", unit="frame")
        for a, block in iter_movie(truth, block_frames=block_frames, threads=threads):
            yield from block
            if bar is not None:
                bar.update(len(block))
            if a + len(block) >= next_log:
                log.info("simulate: rendered %d/%d frames (%.1f s)", a + len(block), T, time.perf_counter() - t0)
                next_log += log_every
        if bar is not None:
            bar.close()

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        tw.write(pages(), shape=(T, Y, X), dtype=np.uint16, photometric="minisblack",
                 metadata={"axes": "TYX", "fps": truth.fps}, software="calflow.simulate")
    return time.perf_counter() - t0


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that holds anything but a previous simulator output."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CalflowInputError("exists and is not a directory", file=out_dir, fix="choose a new output directory")
    foreign = sorted(e.name for e in out_dir.iterdir() if e.name not in SESSION_FILES.values())
    if foreign:
        raise CalflowInputError(
            f"output directory holds files the simulator did not write ({', '.join(foreign[:5])}); "
            "it would be replaced as a whole",
            file=out_dir,
            fix="choose an empty or new directory",
        )


def write_session(
    out_dir: str | Path,
    params: SimParams | None = None,
    seed: int = 0,
    *,
    anatomy_seed: int | None = None,
    block_frames: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Simulate and write one session directory; returns {key: path} for :data:`SESSION_FILES`.

    ``progress`` shows a tqdm bar while the movie is rendered.

    The directory is built next to ``out_dir`` and renamed into place when complete, so a
    killed run leaves no partial session. An existing ``out_dir`` is replaced only if it holds
    nothing but simulator files.
    """
    out_dir = Path(out_dir)
    p = params or SimParams()
    _check_out_dir(out_dir)
    t0 = time.perf_counter()
    truth = simulate(p, seed, anatomy_seed=anatomy_seed)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        movie_s = _write_movie(truth, tmp / SESSION_FILES["movie"], block_frames, threads, progress)
        save_ground_truth(truth, tmp / SESSION_FILES["ground_truth"])
        _write_csv(tmp / SESSION_FILES["stim_log"], ("frame", "targets"), enumerate(truth.stim_log()))
        _write_csv(
            tmp / SESSION_FILES["targets"],
            ("id", "y", "x", "radius"),
            [(j, f"{truth.centers[k, 0]:.3f}", f"{truth.centers[k, 1]:.3f}", f"{truth.radii[k]:.3f}")
             for j, k in enumerate(truth.target_cells)],
        )
        tifffile.imwrite(tmp / SESSION_FILES["masks"], truth.masks(), photometric="minisblack")
        meta = {
            "generator": GENERATOR,
            "calflow_version": __version__,
            "seed": truth.seed,
            "anatomy_seed": truth.anatomy_seed,
            "params": p.to_dict(),
            "movie": {"file": SESSION_FILES["movie"], "shape": list(truth.shape), "dtype": "uint16",
                      "axes": "TYX", "fps": truth.fps},
            "derived": {
                "n_trials": int(truth.trial_start.size),
                "n_patterns": int(truth.patterns.shape[0]),
                "delay_frames": truth.delay_frames,
                "world_pad": truth.pad,
                "g_mean": truth.g.mean(axis=0).tolist(),
                "render_seconds": round(movie_s, 3),
                "total_seconds": round(time.perf_counter() - t0, 3),
            },
            "conventions": {
                "shift": "(dy, dx) moves the content: world point q appears at q + D in frame t; "
                "frame_t(p) = world(p - D)",
                "W": "W[source, target]: row = stimulated/presynaptic cell, column = driven cell",
                "targets": "target id j is cell target_cells[j] (ground_truth.npz)",
            },
        }
        (tmp / SESSION_FILES["params"]).write_text(json.dumps(meta, indent=2) + "\n")
    return {key: out_dir / name for key, name in SESSION_FILES.items()}
