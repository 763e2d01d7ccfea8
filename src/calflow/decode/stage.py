"""What runs the stage: :func:`decode` (traces and trials in memory -> the result dict: responses,
spontaneous cleaning, scores) and :func:`decode_session`, the entry point of rule ``decode``
(cnmf.zarr + stim log -> decode.json and the confusion figure)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from calflow.decode.cleaning import spontaneous_cleaning
from calflow.decode.params import DecodeParams
from calflow.decode.plots import confusion_figure
from calflow.decode.scoring import score_classifiers
from calflow.decode.store import _all_finite, decay_time_s, load_traces, write_decode
from calflow.decode.trials import Trials, read_trials, response_matrix, spontaneous_frames
from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.params import from_section

log = logging.getLogger("calflow.decode")


def decode(traces: np.ndarray, trials: Trials, fps: float, params: DecodeParams | dict | None = None, *,
           spontaneous: np.ndarray | None = None, decay_s: float | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """Decode trial labels from ``traces`` (N neurons, T frames; float32 is not copied) at ``fps`` Hz.

    ``spontaneous`` (N, Ts): a separate recording of the same neurons to take the spontaneous
    statistics from instead of frames of ``traces``; ``decay_s``: the indicator's decay time (s),
    only to warn when ``spont_guard_s`` is shorter than 3 of them. Returns the result dict:
    ``result["classifiers"][name]`` holds accuracy, ci95, fold mean/std, confusion (rows = true,
    columns = predicted, in ``result["classes"]`` order), p_value and p_method; ``"dummy"`` is the
    baseline. No neurons (N = 0) gives ``status: "no components"`` and no classifiers.
    """
    p = from_section(DecodeParams, "decode", params)
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise CalflowInputError(f"traces of shape {traces.shape}: need (neurons, frames)")
    result: dict[str, Any] = {"params": asdict(p), "fps": float(fps), "n_neurons": int(traces.shape[0]),
                              "n_frames": int(traces.shape[1]), "n_trials_total": len(trials)}
    if traces.shape[0] == 0:
        # a session CNMF found no (accepted) cells in is a result, not an error: the rest of the run goes on
        return {**result, "classifiers": {}, "status": "no components",
                "note": "cnmf.zarr has no accepted components (set decode.accepted_only false or loosen "
                        "the cnmf acceptance criteria)"}
    if not _all_finite(traces):
        raise CalflowInputError("traces hold NaN or infinite values", fix="check the cnmf stage's output")
    t0 = time.perf_counter()
    resp, inside = response_matrix(traces, trials, fps, p)
    order = np.argsort(trials.onset[inside], kind="stable")           # time order (folds are runs of trials)
    resp, labels = resp[order], trials.label[inside][order]
    classes, counts = np.unique(labels, return_counts=True)
    keep_cls = classes[counts >= p.folds]
    keep = np.isin(labels, keep_cls)
    result.update({
        "n_trials_outside_movie": int((~inside).sum()),
        "dropped_classes": {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < p.folds},
        "classes": [str(c) for c in keep_cls],
        "n_trials": int(keep.sum()),
        "cv": f"{p.cv} {p.folds}-fold",
    })
    if spontaneous is not None:
        spontaneous = np.asarray(spontaneous)
        if spontaneous.ndim != 2 or spontaneous.shape[0] != traces.shape[0] or not _all_finite(spontaneous):
            raise CalflowInputError(f"spontaneous recording of shape {spontaneous.shape}: need finite (neurons = "
                                    f"{traces.shape[0]}, frames)")
        spont, source = spontaneous, "recording"
    else:
        mask = spontaneous_frames(traces.shape[1], trials, fps, p)
        spont = traces[:, mask]
        source = "epochs" if len(trials.spont) and p.spontaneous != "gaps" else "gaps"
    cleaning = spontaneous_cleaning(spont, p)
    del spont
    result.update(spontaneous_source=source, spont_guard_s=p.spont_guard_s, **cleaning.info)
    notes = [v for k, v in cleaning.info.items() if k.startswith("note_")]
    if decay_s is not None and math.isfinite(decay_s):
        result["decay_s_median"] = float(decay_s)
        if source != "recording" and p.spont_guard_s < 3 * decay_s:
            notes.append(f"decode.spont_guard_s = {p.spont_guard_s:g} s is shorter than 3 decay times of the "
                         f"traces (3 x {decay_s:.2f} s): response tails may count as spontaneous activity")
            log.warning("decode: %s", notes[-1])
    if cleaning.info.get("pcs_cap"):
        log.info("decode: %d of %d spontaneous PCs removed (%s)", cleaning.info["pcs_removed"],
                 p.remove_spontaneous_pcs, cleaning.info["pcs_cap"])
    if notes:
        result["notes"] = notes
    log.info("decode: responses and spontaneous cleaning (%s, %d frames) in %.2f s", source,
             cleaning.info["spontaneous_frames"], time.perf_counter() - t0)
    if keep_cls.size < 2:
        result.update(status="too few trials", classifiers={},
                      note=f"fewer than 2 stimulus classes with >= {p.folds} trials (folds); nothing to decode")
        return result
    x = cleaning.apply(resp[keep])
    del resp
    y = np.searchsorted(keep_cls, labels[keep])
    log.info("decode: %d trials x %d neurons, %d classes, %s", *x.shape, keep_cls.size, result["cv"])
    result["tree_neurons_used"] = int(min(x.shape[1], p.tree_neurons or x.shape[1]))
    result["classifiers"] = score_classifiers(x, y, keep_cls.size, p, n_jobs)
    result["status"] = "ok"
    result["chance"] = 1.0 / keep_cls.size
    return result


def decode_session(cnmf_store: str | Path, stim_log: str | Path, out_json: str | Path, plot_dir: str | Path,
                   params: DecodeParams | dict | None = None, *, n_jobs: int = 1) -> dict[str, Any]:
    """Rule ``decode``: cnmf.zarr + stim log -> decode.json and plots/decode/confusion.png."""
    p = from_section(DecodeParams, "decode", params)
    trials = read_trials(stim_log)
    traces, fps, idx = load_traces(cnmf_store, p.traces, p.accepted_only)
    if len(trials) and trials.onset.max() >= traces.shape[1]:
        raise CalflowInputError(f"stimulus onset at frame {int(trials.onset.max())} but the traces have "
                                f"{traces.shape[1]} frames", file=stim_log, fix="check that the stim log belongs to the movie")
    if len(trials.spont) and trials.spont[:, 1].max() > traces.shape[1]:
        raise CalflowInputError(f"a spontaneous epoch ends at frame {int(trials.spont[:, 1].max())} but the traces "
                                f"have {traces.shape[1]} frames", file=stim_log,
                                fix="check the stop of the 'spontaneous' rows")
    result = decode(traces, trials, fps, p, decay_s=decay_time_s(cnmf_store, idx, fps), n_jobs=n_jobs)
    result.update(cnmf=str(cnmf_store), stim_log=str(stim_log), components=idx.tolist())
    with atomic_output(plot_dir) as tmp:
        tmp.mkdir(parents=True)
        confusion_figure(result, tmp / "confusion.png")
    write_decode(out_json, result)
    return result
