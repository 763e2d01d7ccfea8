"""The stage's entry point, :func:`session_stim_maps` (what rule ``stim_maps`` calls): one session's
trials from its stim log, their STA maps, the mean per pattern and the ZNCC matrix, written with
:func:`~calflow.stim_maps.store.write_stim_maps`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calflow.compare.zncc import pattern_maps, zncc_matrix
from calflow.errors import CalflowInputError
from calflow.io import MovieReader
from calflow.stim_maps.params import StimMapsParams
from calflow.stim_maps.sta import compute_trial_maps, trial_weights
from calflow.stim_maps.store import StimMaps, write_stim_maps
from calflow.stimulation import check_in_frame, find_trials, read_labels, read_targets


def session_stim_maps(entry: Mapping[str, Any], section: Mapping[str, Any] | StimMapsParams,
                      out_store: str | Path, *, animal: str = "") -> dict:
    """STA maps of one session -> ``stim_maps.zarr``. ``entry``: session, condition, motion,
    stim_log, targets (as for classify). Returns a short summary."""
    p = StimMapsParams.from_config(section)
    targets = read_targets(entry["targets"])
    n_frames, *frame_shape = MovieReader(entry["motion"]).shape
    check_in_frame(targets, frame_shape, entry["targets"])
    labels = read_labels(entry["stim_log"], targets, n_frames)
    trials = find_trials(labels, 1)
    if not len(trials.start):
        raise CalflowInputError("the stim log has no stimulated frame", file=entry["stim_log"],
                                fix="give a stim log with at least one stimulation trial")
    wts = trial_weights(trials.start, trials.stop, n_frames, p.baseline_frames, p.tail_frames)
    maps = compute_trial_maps(entry["motion"], wts, p.downsample, p.block_frames)
    patterns = sorted(set(trials.pattern), key=lambda t: (len(t), t))
    index = {pat: i for i, pat in enumerate(patterns)}
    tp = np.array([index[t] for t in trials.pattern], np.int64)
    names = ["+".join(targets.ids[j] for j in pat) for pat in patterns]
    pm = pattern_maps(maps, tp, len(patterns))
    z = zncc_matrix(pm)
    result = StimMaps(
        attrs={"session": str(entry["session"]), "condition": str(entry.get("condition", "")),
               "group": animal or str(entry["session"]), "patterns": names, "target_ids": targets.ids,
               "method": "sta", "zncc_map": "signed", "members": 1, "control": "stimulus_triggered_average",
               "downsample": p.downsample, "baseline_frames": p.baseline_frames,
               "tail_frames": p.tail_frames, "units": "dF (movie units), frames block-averaged"},
        trial_maps=maps.astype(np.float32), trial_pattern=tp, trial_fold=np.zeros(len(tp), np.int64),
        trial_start=trials.start.astype(np.int64), pattern_maps=pm.astype(np.float32),
        pattern_trials=np.bincount(tp, minlength=len(patterns)).astype(np.int64), zncc=z)
    write_stim_maps(out_store, result)
    return {"trials": int(len(tp)), "patterns": len(names)}
