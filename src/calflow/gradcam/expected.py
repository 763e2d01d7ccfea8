"""What the Grad-CAM maps of a simulated session should look like (validation only): the ground-truth
functional footprint of each single target, from the connectivity W, the footprints, the
stimulation drive and each cell's calcium response. Production code does not call it;
:func:`true_response_maps` imports :mod:`calflow.simulate` inside the function only. No torch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def expected_response_maps(W: np.ndarray, target_cells: Sequence[int], footprints: np.ndarray, w_gain: float,
                           layer_shape: Sequence[int], cell_response: np.ndarray | None = None,
                           drive: np.ndarray | None = None) -> np.ndarray:
    """Ground-truth functional footprint of each single target (validation on simulated data).

    Target j's expected response map is the footprints of the cells the stimulation drives directly
    (``drive`` (N, K): cell k's extra rate per unit of target j's own while j is stimulated; default:
    the target alone, ``eye(K)[target_cells]``; with off-target excitation also its neighbours) plus
    the footprints of the cells the target drives through W, weighted by ``w_gain * W[target, k]``
    (the simulator's extra rate per unit of the target's), block-averaged to the Grad-CAM layer's
    resolution. ``cell_response`` (2, K), from :func:`calflow.simulate.evoked_calcium`, turns rates
    into expected fluorescence: directly driven cells are weighted by row 0 (the rate rises with the
    stimulation) and cells driven through W by row 1 (delayed), each with its own spike amplitude
    and calcium kinetics; without it every cell responds alike. ``W`` (K, K) W[source, target],
    ``footprints`` (K, H, W); returns (N, ly, lx). Their ZNCC is the "true connectivity
    similarity" the single-target Grad-CAM ZNCC is validated against.
    """
    K = W.shape[0]
    cells = [int(c) for c in target_cells]
    r = np.ones((2, K)) if cell_response is None else np.asarray(cell_response, np.float64)
    direct = np.eye(K)[cells] if drive is None else np.asarray(drive, np.float64)
    resp = direct * r[0] + float(w_gain) * np.asarray(W)[cells] * r[1]
    ly, lx = int(layer_shape[0]), int(layer_shape[1])
    f = footprints.shape[1] // ly
    maps = np.einsum("pk,khw->phw", resp, np.asarray(footprints, np.float64))
    return maps[:, : ly * f, : lx * f].reshape(len(cells), ly, f, lx, f).mean((2, 4))


def relative_stim_drive(truth: Mapping[str, Any], cells: Sequence[int]) -> np.ndarray | None:
    """(N, K) direct stimulation drive of every cell per unit of the target's own rate, for the
    targets ``cells``, from the ground truth's ``stim_drive`` (K x N Hz: cell k's extra rate while
    target j is stimulated, the target itself and, with off-target excitation, its neighbours, as
    :func:`calflow.simulate.simulate` draws it). None for a ground truth from before ``stim_drive``."""
    if "stim_drive" not in truth:
        return None
    sd = np.asarray(truth["stim_drive"], np.float64)  # (K, N)
    column = {int(c): j for j, c in enumerate(np.asarray(truth["target_cells"]).tolist())}
    out = np.zeros((len(cells), sd.shape[0]))
    for i, c in enumerate(int(x) for x in cells):
        if c not in column:
            raise ValueError(f"cell {c} is not a target of this ground truth")
        own = sd[c, column[c]]
        out[i] = sd[:, column[c]] / own if own > 0 else np.eye(sd.shape[0])[c]
    return out


def true_response_maps(truth: Mapping[str, Any], cells: Sequence[int], layer_shape: Sequence[int], context: int,
                       *, kinetics: bool = True) -> np.ndarray:
    """:func:`expected_response_maps` of a simulated session from its ground truth
    (``ground_truth.npz`` of :func:`calflow.simulate.write_session`), (N, ly, lx).

    The direct drive is the truth's ``stim_drive`` (:func:`relative_stim_drive`: the target and any
    off-target excitation of its neighbours), or the target alone for a file without it (from
    before off-target excitation, which it did not simulate). ``kinetics``: weight each cell by its
    expected fluorescence response (:func:`calflow.simulate.evoked_calcium`: its spike amplitude
    and calcium time constants, over input windows of ``2 * context + 1`` frames); False = every
    cell responds alike.
    """
    from calflow.simulate import evoked_calcium

    resp = None
    if kinetics:
        trial_frames = int(json.loads(str(truth["params_json"]))["trial_frames"])
        resp = evoked_calcium(truth["g"], truth["spike_weight"], float(truth["fps"]), trial_frames,
                              int(truth["delay_frames"]), context)
    return expected_response_maps(truth["W"], cells, truth["footprints"], float(truth["w_gain"]), layer_shape, resp,
                                  relative_stim_drive(truth, cells))
