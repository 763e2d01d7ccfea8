"""The stage's entry point, :func:`session_gradcam` (what rule ``gradcam`` calls): one session's
trial and pattern maps of the real classifier and, in the same job, of the shuffled-label control,
with their ZNCC matrices, written with :func:`~calflow.gradcam.store.write_gradcam` (+ figures)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calflow.classify.data import load_session
from calflow.classify.model import load_fold_models
from calflow.classify.params import ClassifyParams
from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.gradcam.cam import display_maps, pattern_means, pattern_name, trial_maps
from calflow.gradcam.params import GradcamParams
from calflow.gradcam.plots import plot_session
from calflow.gradcam.similarity import maps_for_zncc, offdiag, zncc_matrix
from calflow.gradcam.store import GradcamMaps, write_gradcam
from calflow.gradcam.traces import cnmf_target_correlation
from calflow.stimulation import read_targets

log = logging.getLogger("calflow.gradcam")


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
    device = resolve_device(p.device, key="gradcam.device")
    loaded = [(path, store, *_load_checked(path, targets, entry, device)) for path, store in runs]
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


def _load_checked(model_path: str | Path, targets: Any, entry: Mapping[str, Any],
                  device: Any = "cpu") -> tuple[list, ClassifyParams, dict]:
    """A group's fold models, their ClassifyParams and info, after checking the targets table is theirs."""
    models, info = load_fold_models(model_path, device)
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
    maps = GradcamMaps(
        attrs={"session": str(entry["session"]), "condition": str(entry.get("condition", "")),
               "group": meta.get("group", ""), "model": str(model_path), "layer": p.layer,
               "members": int(tm["member_trial_maps"].shape[0]), "control": meta.get("control"),
               "method": p.method, "score": p.score, "zncc_map": p.zncc_map, "patterns": names,
               "target_ids": targets.ids,
               "frame_shape": list(frame_shape), "downsample": cp.downsample,
               "layer_shape": list(pm.shape[1:]), "n_folds": cp.n_folds,
               "heldout": "every trial's map comes from the fold model that did not train on it",
               "cnmf": str(cnmf_store) if cnmf is not None else None},
        pattern_maps=pm.astype(np.float32), pattern_maps_relu=np.maximum(pm, 0).astype(np.float32),
        display_maps=disp.astype(np.float32), zncc=z.astype(np.float64),
        pattern_targets=np.array([list(t) + [-1] * (2 - len(t)) if len(t) <= 2 else list(t[:2]) for t in patterns],
                                 np.int64),
        pattern_trials=counts.astype(np.int64), trial_maps=tm["trial_maps"], member_trial_maps=tm["member_trial_maps"],
        trial_pattern=tm["trial_pattern"], trial_fold=data_trials.fold.astype(np.int64),
        trial_start=data_trials.start.astype(np.int64), mean_image=data_info["mean_image"].astype(np.float32),
        target_yx=targets.yx.astype(np.float64), trace_corr=cnmf["corr"] if cnmf is not None else None,
        trace_component=cnmf["component"] if cnmf is not None else None)
    write_gradcam(out_store, maps)
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
