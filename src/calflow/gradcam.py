"""Grad-CAM maps of the stimulation classifier and ZNCC matrices between stimulation patterns.

Hand-written rather than taken from pytorch-grad-cam or captum: the maps are the product of this
stage (kept signed and at layer resolution, averaged per held-out trial and per pattern, compared
between conditions), and the computation is a few lines; ``tests/test_classify.py`` checks it
against captum's ``LayerGradCam`` on the same model and input.

Grad-CAM (Selvaraju et al. 2017) of a score y at a layer with activations A (C, h, w):
``alpha_c = mean_xy dy/dA_c``, ``cam = sum_c alpha_c A_c`` (signed, layer resolution). For display:
``ReLU(cam)`` bilinearly upsampled to the frame. The score of a pattern (:func:`score_weights`) is by
default the evidence that its targets rather than nothing were stimulated, ``sum_k (y_k - y_none)``
over its targets' logits (``score: vs_none``); ``score: logit`` is the plain ``sum_k y_k``. Why: the
classifier's head is position-aware (a dense layer over the map), so ``dy_k/dA`` is positive near
target k and negative at most other positions, and its spatial mean ``alpha_c`` is negative for
the channels that detect activity: the plain logit's map is inverted (negative where the
activity is). Subtracting the ``none`` logit, for which activity anywhere is evidence against,
cancels that shared part on the simulated animals of the validation (10-min sessions); on the
demo (1-2 trials per pattern) the sign changes with the classifier's training seed, so it is not
guaranteed (docs/classify.md has the measurements). ``method: hirescam`` (HiResCAM) keeps the
gradient per position, ``sum_c dy/dA_c * A_c``: its sign holds on the demo, but the similarity
between targets' maps is weaker, so Grad-CAM is the default.

Per session (:func:`session_gradcam`): every trial's map is the mean over its stimulated frames of
the Grad-CAM of the pattern's targets, computed with the fold model that did not train on that
trial (cross-fitting, calflow.classify); a pattern's map is the mean of its trials' maps. ZNCC
(zero-normalised cross-correlation, the Pearson r of two maps' pixels) between the
layer-resolution maps of all patterns (signed; ReLU-ed with ``zncc_map: relu``) is the pattern x
pattern matrix. Units: maps are in logit
units per activation unit (only their shape matters for ZNCC, which is scale-free).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from calflow.classify.data import _net_input, load_session, window
from calflow.classify.model import load_fold_models
from calflow.classify.params import ClassifyParams
from calflow.classify.train import pass_rows
from calflow.compare import zncc_matrix  # noqa: F401 - the one definition (no torch there)
from calflow.errors import CalflowInputError
from calflow.io import atomic_output, open_group, write_array
from calflow.params import check_fields, from_section, invalid, param
from calflow.stimulation import read_targets

log = logging.getLogger("calflow.gradcam")


SCORES = ("vs_none", "logit")
METHODS = ("gradcam", "hirescam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}


@dataclass(frozen=True)
class GradcamParams:
    """The ``gradcam`` config section (docs/classify.md)."""

    layer: str = "0"  # "last" or the index of a conv block of the classifier (0 = first)
    # gradcam: channel weights = spatial mean of the gradient | hirescam: gradient x activation
    method: str = param("gradcam", choices=METHODS)
    # vs_none: sum over the pattern's targets of logit - none logit | logit: sum of logits
    score: str = param("vs_none", choices=SCORES)
    # which layer-resolution maps ZNCC compares: signed | relu (Grad-CAM as displayed)
    zncc_map: str = param("signed", choices=("signed", "relu"))
    batch_size: int = param(64, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "gradcam")
        if self.layer != "last" and not str(self.layer).isdigit():
            raise invalid("gradcam", "layer", self.layer, "must be last or the index of a conv block",
                          "use 'last' or the index of a conv block, e.g. '1'")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | GradcamParams | None) -> GradcamParams:
        cfg = dict(config) if isinstance(config, Mapping) else config
        if isinstance(cfg, dict) and "layer" in cfg:
            cfg["layer"] = str(cfg["layer"])
        return from_section(cls, "gradcam", cfg)


def get_layer(model: nn.Module, layer: str | int) -> nn.Module:
    """The conv block ``layer`` of a :class:`calflow.classify.StimNet` ("last" or an index)."""
    blocks = model.features  # type: ignore[attr-defined]
    if str(layer) == "last":
        return blocks[len(blocks) - 1]
    i = int(layer)
    if not 0 <= i < len(blocks):
        raise invalid("gradcam", "layer", layer, f"the classifier has {len(blocks)} blocks",
                      f"use 'last' or 0..{len(blocks) - 1}")
    return blocks[i]


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, weights: torch.Tensor,
             method: str = "gradcam") -> np.ndarray:
    """Signed Grad-CAM at ``layer`` of the score ``sum_k weights[b, k] * logits[b, k]``.

    ``x`` (B, C, H, W); ``weights`` (B, n_out), e.g. one-hot of a target output, or ones on every
    target of a pattern. Samples are independent (the network has no batch statistics).
    ``method``: ``gradcam`` weighs each channel's activations by the spatial mean of its gradient;
    ``hirescam`` (Draelos & Carin 2020) multiplies them by the gradient pixel by pixel,
    ``sum_c dy/dA_c * A_c``.

    A plain :class:`calflow.classify.StimNet` gives (B, h, w). A
    :class:`calflow.classify.StimEnsemble` of K members gives every member's map, (B, K, h, w), from
    one backward pass: the score is the sum over members of each member's score (``weights``
    (B, n_out) for all, or (B, K, n_out)), and as member k's channels (``k * c .. (k + 1) * c - 1``
    of the layer) reach only member k's logits, the gradient there is that of member k's own
    score; its channel weights and channel sum run over its own channels.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x)
            w = weights.to(logits.dtype)
            if logits.dim() == 3 and w.dim() == 2:  # the same score for every member
                w = w[:, None, :]
            score = (logits * w).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    if logits.dim() == 3:  # ensemble: (B, K * c, h, w) -> (B, K, c, h, w), member by member
        K = logits.shape[1]
        a = a.reshape(a.shape[0], K, -1, *a.shape[2:])
        grad = grad.reshape(a.shape)
    cdim = a.dim() - 3
    if method == "hirescam":
        return (grad * a).sum(dim=cdim).cpu().numpy()
    alpha = grad.mean(dim=(-2, -1), keepdim=True)
    return (alpha * a).sum(dim=cdim).cpu().numpy()


def score_weights(n_out: int, targets: Sequence[int], score: str = "vs_none") -> np.ndarray:
    """(n_out,) float32 weights w of the Grad-CAM score ``sum_k w_k * logit_k`` of a pattern whose target
    outputs are ``targets`` (the last output is ``none``): ones on the targets, and for ``vs_none``
    minus their number on ``none`` (``sum over targets of logit_k - logit_none``)."""
    if score not in SCORES:
        raise ValueError(f"score {score!r} is not one of {SCORES}")
    w = np.zeros(int(n_out), np.float32)
    w[list(targets)] = 1.0
    if score == "vs_none":
        w[-1] -= len(targets)
    return w


def upsample(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, *size)."""
    t = torch.from_numpy(np.asarray(cam, np.float32))[:, None]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[:, 0].numpy()


def display_maps(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """ReLU then bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, *size)."""
    return upsample(np.maximum(np.asarray(cam, np.float32), 0), size)


def zncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-normalised cross-correlation of two maps (Pearson r of their pixels); NaN if one is flat."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def offdiag(z: np.ndarray) -> np.ndarray:
    """The upper-triangle (i < j) entries of a square matrix."""
    i, j = np.triu_indices(len(z), 1)
    return z[i, j]


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


def pattern_name(pattern: Sequence[int], ids: Sequence[str]) -> str:
    return "+".join(ids[j] for j in pattern)


# --------------------------------------------------------------------------------------------
# cnmf traces (optional input; the contract is in docs/classify.md)
# --------------------------------------------------------------------------------------------


def cnmf_target_correlation(store: str | Path, target_yx: np.ndarray, max_distance: float = 6.0,
                            trace: str = "dff") -> dict[str, np.ndarray]:
    """Trace correlation between the targets' CNMF components (accepted, nearest centroid).

    Returns ``component`` (N,) int64 (-1 where no accepted component lies within
    ``max_distance`` px) and ``corr`` (N, N) Pearson r of their ``trace`` rows (NaN where missing).
    """
    g = open_group(store)
    names = set(g.array_keys())
    for need in ("centroids", trace):
        if need not in names:
            raise CalflowInputError(f"cnmf store has no '{need}' array", file=store,
                                    fix="re-run the cnmf stage (see the cnmf.zarr contract)")
    cents = np.asarray(g["centroids"][:], np.float64)
    accepted = np.asarray(g["accepted"][:], bool) if "accepted" in names else np.ones(len(cents), bool)
    traces = np.asarray(g[trace][:], np.float64)
    comp = np.full(len(target_yx), -1, np.int64)
    for j, yx in enumerate(np.asarray(target_yx, np.float64)):
        d = np.hypot(*(cents - yx).T)
        d[~accepted] = np.inf
        if len(d) and d.min() <= max_distance:
            comp[j] = int(d.argmin())
    n = len(comp)
    corr = np.full((n, n), np.nan)
    ok = np.flatnonzero(comp >= 0)
    if len(ok):
        corr[np.ix_(ok, ok)] = np.corrcoef(traces[comp[ok]]) if len(ok) > 1 else 1.0
    return {"component": comp, "corr": corr}


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


def _mean_cam(model: nn.Module, layer: nn.Module, data: Any, frames: np.ndarray, targets: Sequence[int],
              context: int, p: GradcamParams) -> np.ndarray:
    """Mean signed Grad-CAM over ``frames`` of the pattern score of the ``targets`` outputs: (K, h, w),
    one map per member of a :class:`calflow.classify.StimEnsemble` (all from one backward pass per batch)."""
    dev = next(model.parameters()).device
    w = np.tile(score_weights(data.labels.shape[1], targets, p.score), (len(frames), 1))
    step = min(p.batch_size, pass_rows(model, dev) or p.batch_size)  # CPU: cache-sized passes
    acc = []
    for a in range(0, len(frames), step):
        idx = frames[a : a + step]
        x = _net_input(data, window(data, idx, context), model.input_hw)
        cam = grad_cam(model, layer, torch.from_numpy(x).to(dev), torch.from_numpy(w[a : a + step]).to(dev),
                       p.method)
        acc.append(cam if cam.ndim == 4 else cam[:, None])
    return np.concatenate(acc).mean(axis=0)


def trial_maps(models: Sequence[nn.Module], data: Any, p: GradcamParams, context: int) -> dict[str, np.ndarray]:
    """Signed layer-resolution Grad-CAM of every trial (mean over its stimulated frames, for the score
    of the trial's pattern in the stim log), each from the fold model that did not train on it.
    Returns member_trial_maps (K, n, h, w) (every ensemble member's), trial_maps (n, h, w) (their
    mean over members), trial_pattern (n,) index into ``patterns`` and ``patterns`` (list of
    target-index tuples)."""
    tr = data.trials
    patterns = sorted(set(tr.pattern), key=lambda t: (len(t), t))
    index = {pat: i for i, pat in enumerate(patterns)}
    maps = []
    for i in range(len(tr.start)):
        model = models[int(tr.fold[i])]
        maps.append(_mean_cam(model, get_layer(model, p.layer), data, np.arange(tr.start[i], tr.stop[i]),
                              tr.pattern[i], context, p))
    member_maps = np.stack(maps, axis=1).astype(np.float32)  # (K, n, h, w)
    return {"member_trial_maps": member_maps, "trial_maps": member_maps.mean(axis=0, dtype=np.float64).astype(np.float32),
            "trial_pattern": np.array([index[t] for t in tr.pattern], np.int64), "patterns": patterns}


def pattern_means(trial_maps: np.ndarray, trial_pattern: np.ndarray, n_patterns: int) -> np.ndarray:
    """(P, h, w) mean of the trial maps of each pattern (NaN for a pattern without trials)."""
    out = np.full((n_patterns, *trial_maps.shape[1:]), np.nan, np.float64)
    for k in range(n_patterns):
        sel = trial_pattern == k
        if sel.any():
            out[k] = trial_maps[sel].mean(axis=0)
    return out


def maps_for_zncc(maps: np.ndarray, how: str) -> np.ndarray:
    return np.maximum(maps, 0) if how == "relu" else maps


def session_gradcam(entry: Mapping[str, Any], model_path: str | Path, section: Mapping[str, Any] | GradcamParams,
                    out_store: str | Path, *, plots_dir: str | Path | None = None,
                    cnmf_store: str | Path | None = None, scratch_dir: str = "",
                    control_model: str | Path | None = None, control_store: str | Path | None = None) -> dict:
    """Grad-CAM maps and the ZNCC matrix of one session -> ``gradcam.zarr`` (+ figures).

    ``entry``: session, condition, motion, stim_log, targets, [footprints] (as for classify);
    ``scratch_dir``: where the session's streamed frames go (``classify.scratch_dir``; "" = $TMPDIR).
    Every trial's map is the Grad-CAM of the score of its pattern in the stim log.
    ``trial_maps`` is the mean over the ensemble's members of ``member_trial_maps`` (member, trial,
    ly, lx); attrs ``members`` = K (1 for a model file from before the ensemble).

    With ``control_model`` (the shuffled-label control's ``model.pt``, of ``train_group(...,
    shuffle_labels=True)``) the same computation with that network -> ``control_store`` (attrs
    ``control: shuffled_labels``; no figures, no trace correlation), from the same streamed session
    (one job, the movie read once). Returns the info of the real model's maps (``control``: the
    control's).
    """
    p = GradcamParams.from_config(section)
    targets = read_targets(entry["targets"])
    runs = [(model_path, out_store)] + ([(control_model, control_store)] if control_model else [])
    loaded = [(path, store, *_load_checked(path, targets, entry)) for path, store in runs]
    cp = loaded[0][3]
    for path, _, _, other, _ in loaded[1:]:
        if _session_params(other) != _session_params(cp):
            raise CalflowInputError(f"the control classifier's input settings {_session_params(other)} differ from "
                                    f"{model_path}'s {_session_params(cp)}", file=str(path),
                                    fix="re-train this session's group (train_classifier trains both)")
    with load_session(entry, targets, dataclasses.replace(cp, scratch_dir=scratch_dir)) as data:
        maps = [trial_maps(models, data, p, int(info["arch"].get("context", 0))) for _, _, models, _, info in loaded]
        data_info, data_trials = data.info, data.trials
    out = []
    for k, ((path, store, _, model_cp, info), tm) in enumerate(zip(loaded, maps, strict=True)):
        out.append(_write_session_maps(entry, targets, p, model_cp, info["meta"], path, store, tm, data_info,
                                       data_trials, cnmf_store=cnmf_store if k == 0 else None,
                                       plots_dir=plots_dir if k == 0 else None))
    return {**out[0], "control": out[1]} if len(out) > 1 else out[0]


def _load_checked(model_path: str | Path, targets: Any, entry: Mapping[str, Any]) -> tuple[list, ClassifyParams, dict]:
    """A group's fold models, their ClassifyParams and info, after checking the targets table is theirs."""
    models, info = load_fold_models(model_path)
    meta = info["meta"]
    if targets.ids != list(meta["target_ids"]):
        raise CalflowInputError(f"target ids {targets.ids} differ from the classifier's {meta['target_ids']}",
                                file=entry["targets"], fix="re-train the classifier of this session's group")
    return models, ClassifyParams.from_config(meta["params"]), info


def _session_params(cp: ClassifyParams) -> tuple:
    """The settings :func:`calflow.classify.data.load_session` reads a session with."""
    return (cp.downsample, cp.normalise, cp.mask, cp.mask_radius, cp.mask_dilate, cp.n_folds)


def _write_session_maps(entry: Mapping[str, Any], targets: Any, p: GradcamParams, cp: ClassifyParams,
                        meta: Mapping[str, Any], model_path: str | Path, out_store: str | Path,
                        tm: Mapping[str, np.ndarray], data_info: Mapping[str, Any], data_trials: Any, *,
                        cnmf_store: str | Path | None, plots_dir: str | Path | None) -> dict:
    """One model's maps of a session -> ``out_store`` (gradcam.zarr layout) and its figures; the summary info."""
    patterns = tm["patterns"]
    pm = pattern_means(tm["trial_maps"], tm["trial_pattern"], len(patterns))
    z = zncc_matrix(maps_for_zncc(pm, p.zncc_map))
    frame_shape = data_info["frame_shape"]
    disp = display_maps(pm, frame_shape)
    names = [pattern_name(t, targets.ids) for t in patterns]
    counts = np.bincount(tm["trial_pattern"], minlength=len(patterns))
    cnmf = None
    if cnmf_store and Path(cnmf_store).is_dir():
        cnmf = cnmf_target_correlation(cnmf_store, targets.yx)
    with atomic_output(out_store) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        g.attrs.update({"session": str(entry["session"]), "condition": str(entry.get("condition", "")),
                        "group": meta.get("group", ""), "model": str(model_path), "layer": p.layer,
                        "members": int(tm["member_trial_maps"].shape[0]), "control": meta.get("control"),
                        "method": p.method, "score": p.score, "zncc_map": p.zncc_map, "patterns": names,
                        "target_ids": targets.ids,
                        "frame_shape": list(frame_shape), "downsample": cp.downsample,
                        "layer_shape": list(pm.shape[1:]), "n_folds": cp.n_folds,
                        "heldout": "every trial's map comes from the fold model that did not train on it",
                        "cnmf": str(cnmf_store) if cnmf is not None else None})
        write_array(tmp, "pattern_maps", pm.astype(np.float32), ("pattern", "ly", "lx"))
        write_array(tmp, "pattern_maps_relu", np.maximum(pm, 0).astype(np.float32), ("pattern", "ly", "lx"))
        write_array(tmp, "display_maps", disp.astype(np.float32), ("pattern", "y", "x"))
        write_array(tmp, "zncc", z.astype(np.float64), ("pattern", "pattern2"))
        write_array(tmp, "pattern_targets", np.array([list(t) + [-1] * (2 - len(t)) if len(t) <= 2 else list(t[:2])
                                                      for t in patterns], np.int64), ("pattern", "slot"))
        write_array(tmp, "pattern_trials", counts.astype(np.int64), ("pattern",))
        write_array(tmp, "trial_maps", tm["trial_maps"], ("trial", "ly", "lx"))
        write_array(tmp, "member_trial_maps", tm["member_trial_maps"], ("member", "trial", "ly", "lx"))
        write_array(tmp, "trial_pattern", tm["trial_pattern"], ("trial",))
        write_array(tmp, "trial_fold", data_trials.fold.astype(np.int64), ("trial",))
        write_array(tmp, "trial_start", data_trials.start.astype(np.int64), ("trial",))
        write_array(tmp, "mean_image", data_info["mean_image"].astype(np.float32), ("cy", "cx"))
        write_array(tmp, "target_yx", targets.yx.astype(np.float64), ("target", "axis"))
        if cnmf is not None:
            write_array(tmp, "trace_corr", cnmf["corr"], ("target", "target2"))
            write_array(tmp, "trace_component", cnmf["component"], ("target",))
    if plots_dir is not None:
        plot_session(out_store, plots_dir)
    flat = int(np.isnan(np.diag(z)).sum())
    if flat:
        log.warning("%s: %d of %d pattern maps are flat as ZNCC compares them (gradcam.zncc_map %s%s); their ZNCC "
                    "is undefined (NaN)", entry["session"], flat, len(names), p.zncc_map,
                    ": no positive value, Grad-CAM is negative everywhere there (its sign is not guaranteed, "
                    "docs/classify.md)" if p.zncc_map == "relu" else "")
    off = offdiag(z)
    ok = off[np.isfinite(off)]
    return {"patterns": len(names), "trials": int(len(tm["trial_pattern"])), "flat_maps": flat,
            "zncc_sum_offdiag": float(ok.sum()), "zncc_mean_offdiag": float(ok.mean()) if ok.size else None}


def plot_session(store: str | Path, plots_dir: str | Path) -> list[Path]:
    """``zncc.png`` (pattern x pattern heatmap) and ``maps.png`` (Grad-CAM overlays on the mean image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = open_group(store)
    names = list(g.attrs["patterns"])
    z = np.asarray(g["zncc"][:])
    disp = np.asarray(g["display_maps"][:])
    signed = upsample(np.nan_to_num(np.asarray(g["pattern_maps"][:])), disp.shape[1:])
    mean = np.asarray(g["mean_image"][:])
    out_dir = Path(plots_dir)
    out = []
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        fig = zncc_figure(z, names, f"{g.attrs['session']}: ZNCC of Grad-CAM maps")
        fig.savefig(tmp / "zncc.png", dpi=100)
        plt.close(fig)
        method = METHOD_NAMES.get(str(g.attrs.get("method", "gradcam")), "Grad-CAM")
        fig = overlay_figure(mean, disp, names, str(g.attrs["session"]), signed, method)
        fig.savefig(tmp / "maps.png", dpi=80)
        plt.close(fig)
        out = [out_dir / "zncc.png", out_dir / "maps.png"]
    return out


def zncc_figure(z: np.ndarray, names: Sequence[str], title: str, ax: Any = None) -> Any:
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    im = ax.imshow(z, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_title(title, fontsize=9)
    if fig is not None:
        fig.colorbar(im, ax=ax, shrink=0.8, label="ZNCC")
        fig.tight_layout()
    return fig


def overlay_figure(mean: np.ndarray, disp: np.ndarray, names: Sequence[str], title: str,
                   signed: np.ndarray | None = None, method: str = "Grad-CAM") -> Any:
    """Grad-CAM per pattern on the mean image: the ReLU-ed display maps (inferno, above 15 % of
    each map's maximum) and, with ``signed`` (P, H, W), the signed maps below them (red positive,
    blue negative, each map scaled to its own largest magnitude)."""
    import matplotlib.pyplot as plt

    n = len(names)
    cols = min(8, max(n, 1))
    block = (n + cols - 1) // cols
    rows = block * (2 if signed is not None else 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows + 0.3), squeeze=False)
    H, W = disp.shape[1:]
    ext = (-0.5, W - 0.5, H - 0.5, -0.5)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k in range(n):
        ax = axes[k // cols, k % cols]
        ax.imshow(mean, cmap="gray", extent=ext)
        m = disp[k]
        top = float(np.nanmax(m)) if np.isfinite(m).any() else 0.0
        ax.imshow(np.ma.masked_less_equal(m, 0.15 * top if top > 0 else 0), cmap="inferno", alpha=0.6, extent=ext)
        ax.set_title(f"{names[k]} (ReLU)" if signed is not None else names[k], fontsize=7)
        if signed is not None:
            ax = axes[block + k // cols, k % cols]
            ax.imshow(mean, cmap="gray", extent=ext)
            big = float(np.abs(signed[k]).max()) or 1.0
            ax.imshow(np.ma.masked_inside(signed[k], -0.15 * big, 0.15 * big), cmap="RdBu_r", vmin=-big, vmax=big,
                      alpha=0.6, extent=ext)
            ax.set_title(f"{names[k]} (signed)", fontsize=7)
    fig.suptitle(f"{title}: {method} per pattern (held-out trials)", fontsize=9)
    fig.tight_layout()
    return fig
