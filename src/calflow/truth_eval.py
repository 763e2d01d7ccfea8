"""Evaluation of a simulated session against the simulator's ground truth (rule ``evaluate_truth``).

For every session whose movie the demo simulated (``results/demo/{session}/ground_truth.npz``),
:func:`evaluate_session` compares calflow's results with the truth and writes
``results/{session}/truth_eval.json`` (scalars) and ``truth_eval.npz`` (the per-frame series and the
true cells' label image for the report's figures). The report only reads these two files
(docs/report.md has their contract), so it neither imports the simulator nor streams a movie.

* :func:`motion_against_truth`: calflow's patch and rigid shifts against the true within-session
  displacement at the patch centres (px).
* CNMF accuracy: :func:`calflow.cnmf.accuracy.session_accuracy` (streams the corrected movie once).
* :func:`truth_labels`: the simulated cells as a label image.

The simulator (:mod:`calflow.simulate`) is imported inside the functions that load the truth, not
at module import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calflow.io import atomic_output, open_group, read_json, write_json

if TYPE_CHECKING:
    from calflow.simulate import GroundTruth

log = logging.getLogger("calflow.evaluate_truth")
# per-frame series of the motion comparison, (T, 2) float64 px, in truth_eval.npz
MOTION_SERIES = ("true_mean", "true_lo", "true_hi", "rigid")


def motion_against_truth(truth: GroundTruth, rigid_shifts: np.ndarray, patch_shifts: np.ndarray,
                         centers_y: np.ndarray | None = None,
                         centers_x: np.ndarray | None = None) -> dict[str, Any]:
    """calflow's shift estimates against the simulator's true motion.

    ``rigid_shifts`` (T, 2) and ``patch_shifts`` (T, py, px, 2) are motion.zarr's (dy, dx) in px;
    ``centers_y`` (py,) / ``centers_x`` (px,) the patch centres in px (default: the frame centre).
    The truth is the within-session (rigid + non-rigid) displacement at the patch centres
    (:func:`calflow.simulate.true_displacement` with ``static=False``): the session's static
    field-of-view re-placement (offset, rotation) is part of its template, which the corrector
    registers to, not motion to correct, so it is no error. The template sits at the simulator's
    world frame up to a constant offset, so ``estimate = truth + offset`` and errors are measured
    after removing the mean difference (as in docs/motion.md).

    Returns, in px: ``rmse`` / ``max_err`` (RMS and largest error of the patch shifts, the field the
    movie was corrected with), ``rigid_rmse`` (the rigid shift against the true displacement
    averaged over the patch centres), ``true_rms`` / ``true_largest`` (the true motion about its
    mean), ``offset`` (2,) (the template's offset from the world frame), ``n_points`` (patch
    centres compared) and the (T, 2) series ``true_mean``, ``true_lo``, ``true_hi`` (mean, min, max
    of the true displacement over the centres) and ``rigid`` (the rigid estimate, offset removed).
    When the frame counts differ: only ``mismatch`` (a sentence).
    """
    from calflow.simulate import true_displacement

    rigid = np.asarray(rigid_shifts, dtype=float)
    patch = np.asarray(patch_shifts, dtype=float)
    n_t = rigid.shape[0]
    if truth.rigid_shifts.shape[0] != n_t:
        return {"mismatch": f"the ground truth has {truth.rigid_shifts.shape[0]} frames, motion.zarr {n_t}"}
    cy = np.array([(truth.shape[1] - 1) / 2]) if centers_y is None else np.asarray(centers_y)
    cx = np.array([(truth.shape[2] - 1) / 2]) if centers_x is None else np.asarray(centers_x)
    centres = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 2)
    est = patch.reshape(n_t, -1, 2)
    if est.shape[1] != centres.shape[0]:  # e.g. piecewise off: one "patch" = the rigid shift
        est = np.repeat(rigid[:, None, :], centres.shape[0], axis=1)
    # Template point p is world point p + offset; first guess of the offset from the rigid part.
    offset0 = (rigid - truth.rigid_shifts).mean(axis=0)
    true = true_displacement(truth, slice(None), centres + offset0, static=False)  # (T, P, 2)
    offset = (est - true).mean(axis=(0, 1))
    err = est - true - offset
    true_mean = true.mean(axis=1)
    rigid_err = rigid - true_mean
    rigid_err -= rigid_err.mean(axis=0)
    return {
        "true_mean": true_mean,
        "true_lo": true.min(axis=1),
        "true_hi": true.max(axis=1),
        "rigid": rigid - (rigid - true_mean).mean(axis=0),
        "offset": offset,
        "n_points": centres.shape[0],
        "rmse": float(np.sqrt(np.mean(err**2))),
        "max_err": float(np.abs(err).max()),
        "rigid_rmse": float(np.sqrt(np.mean(rigid_err**2))),
        "true_rms": float(np.sqrt(np.mean((true - true.mean(axis=0)) ** 2))),
        "true_largest": float(np.abs(true - true.mean(axis=0)).max()),
    }


def truth_labels(truth_file: str | Path) -> np.ndarray | None:
    """The simulated cells as an (H, W) int32 label image (0 = no cell, k + 1 = cell k, world frame):
    ``masks.tif`` next to the truth, else from the footprints (the strongest one >= 0.5 wins)."""
    truth_file = Path(truth_file)
    masks = truth_file.parent / "masks.tif"
    if masks.is_file():
        import tifffile

        return np.asarray(tifffile.imread(masks)).astype(np.int32)
    with np.load(truth_file) as z:
        if "footprints" not in z.files:
            return None
        footprints = np.asarray(z["footprints"])
    if footprints.ndim != 3:
        return None
    return np.where(footprints.max(axis=0) >= 0.5, footprints.argmax(axis=0) + 1, 0).astype(np.int32)


def _motion_arrays(motion_store: Path) -> dict[str, np.ndarray]:
    g = open_group(motion_store, mode="r")
    return {name: np.asarray(g[name]) for name in ("rigid_shifts", "patch_shifts", "patch_centers_y",
                                                   "patch_centers_x") if name in g}


def evaluate_session(truth_file: str | Path, motion_store: str | Path, cnmf_store: str | Path | None,
                     footprints_store: str | Path | None, out_json: str | Path, out_npz: str | Path, *,
                     session: str = "") -> dict[str, Any]:
    """One simulated session against its ``ground_truth.npz`` -> ``out_json`` and ``out_npz``.

    ``out_json`` (docs/report.md): ``session``, ``ground_truth`` (the path given), ``n_cells``,
    ``n_targets``, ``w_gain`` (the condition's connectivity gain), ``motion`` (the scalars of
    :func:`motion_against_truth`, ``offset`` as [dy, dx] px; or ``{"mismatch": ...}``; null when
    motion.zarr has no shifts) and ``cnmf`` (:func:`calflow.cnmf.accuracy.session_accuracy`; null
    without a cnmf or footprints store). ``out_npz``: the (T, 2) series of ``MOTION_SERIES`` (px)
    when the motion was compared, and ``labels`` (:func:`truth_labels`) when the truth has cells.
    Both are written through :func:`calflow.io.atomic_output`. Returns the JSON's content.
    """
    from calflow.cnmf.accuracy import session_accuracy
    from calflow.simulate import load_ground_truth

    truth_file, motion_store = Path(truth_file), Path(motion_store)
    truth = load_ground_truth(truth_file)
    with np.load(truth_file) as z:
        n_cells = int(z["centers"].shape[0]) if "centers" in z.files else None
        n_targets = int(z["target_cells"].shape[0]) if "target_cells" in z.files else None
        w_gain = float(z["w_gain"]) if "w_gain" in z.files else None
    result: dict[str, Any] = {"session": session, "ground_truth": str(truth_file), "n_cells": n_cells,
                              "n_targets": n_targets, "w_gain": w_gain, "motion": None, "cnmf": None}
    arrays: dict[str, np.ndarray] = {}
    m = _motion_arrays(motion_store)
    if {"rigid_shifts", "patch_shifts"} <= m.keys():
        tm = motion_against_truth(truth, m["rigid_shifts"], m["patch_shifts"], m.get("patch_centers_y"),
                                  m.get("patch_centers_x"))
        arrays.update({k: tm.pop(k) for k in MOTION_SERIES if k in tm})
        if "offset" in tm:
            tm["offset"] = [float(v) for v in tm["offset"]]
        result["motion"] = tm
    if cnmf_store is not None and footprints_store is not None:
        result["cnmf"] = session_accuracy(cnmf_store, truth, motion_store, footprints_store)
    labels = truth_labels(truth_file)
    if labels is not None:
        arrays["labels"] = labels
    with atomic_output(out_npz) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    write_json(out_json, result, indent=1)
    motion, cnmf = result["motion"] or {}, result["cnmf"] or {}
    log.info("%s: shift error %s px RMS, CNMF median r with the true calcium %s", session or truth_file,
             f"{motion['rmse']:.3f}" if "rmse" in motion else "-",
             f"{cnmf['median_r_C']:.3f}" if cnmf.get("median_r_C") is not None else "-")
    return result


def read_truth_eval(out_json: str | Path) -> dict[str, Any] | None:
    """``truth_eval.json`` with its ``truth_eval.npz`` (same directory) merged in, None if absent.

    ``motion`` gets the (T, 2) series of ``MOTION_SERIES`` and ``offset`` as a (2,) array; the label
    image is under ``labels`` (None when the npz has none). Used by the report.
    """
    out_json = Path(out_json)
    if not out_json.is_file():
        return None
    result = read_json(out_json, what="truth_eval.json", fix="rerun the evaluate_truth stage (delete the file first)")
    npz = out_json.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    if npz.is_file():
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
    motion = result.get("motion")
    if motion and "offset" in motion:
        result["motion"] = {**motion, "offset": np.asarray(motion["offset"], dtype=float),
                            **{k: arrays[k] for k in MOTION_SERIES if k in arrays}}
    result["labels"] = arrays.get("labels")
    return result
