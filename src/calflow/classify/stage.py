"""What rule ``train_classifier`` calls: :func:`train_group`.

One model is trained per *target group*: the sessions of one animal, which share the targets
table (ids and positions), pooled over conditions (``group_by: session``: one per session). The
condition comparison then looks at the same network's maps of held-out trials of both conditions,
which is what makes its trial-level permutation test exact (docs/classify.md).

Cross-fitting: fold ``f``'s ensemble trains on every trial block but ``f`` and predicts block ``f``
(:mod:`calflow.classify.data`), so every frame has a held-out prediction and a held-out Grad-CAM
map. Outputs in the group's directory: ``model.pt`` (every fold's weights,
:func:`calflow.classify.model.save_fold_models`), ``metrics.json`` (held-out and training metrics
per session, per condition and per member; per condition the held-out accuracy's percentile CI from
a bootstrap over trials, each trial's frames one cluster, and per session the per-trial counts it
resamples) and ``predictions.npz`` (per session the held-out
probabilities, (T, N + 1) float32, the ensemble's mean over members of the sigmoid).
``shuffle_labels=True``: the shuffled-label control (:data:`CONTROL`) alone, trained the same way;
``control_dir``: the real classifier, then the control in the same process, into ``control_dir``
(the workflow's way: the sessions are streamed once and torch is imported once, which saved 3-4
CPU-s per animal on the demo over a job of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calflow.classify.data import SessionData, load_session, shuffle_trial_labels
from calflow.classify.model import save_fold_models
from calflow.classify.params import ClassifyParams
from calflow.classify.store import write_classifier_outputs
from calflow.classify.train import (
    ACCURACY_BOOTSTRAP,
    frame_metrics,
    predict,
    train_fold,
    trial_counts,
    untrained_folds,
)
from calflow.compare.accuracy import clustered_accuracy
from calflow.device import resolve_device
from calflow.errors import CalflowInputError
from calflow.stimulation import NONE, Targets, read_targets

log = logging.getLogger("calflow.classify")

CONTROL = "shuffled_labels"
# training-set metrics (a diagnostic: did the fold learn, does it overfit) are scored on every 4th of a
# fold's training frames: every trial is still seen, and predicting all of them cost as much as the
# held-out predictions themselves (about 3 % of the demo's classifier training)
TRAIN_METRIC_STRIDE = 4
ACCURACY_CI_METHOD = (f"95% percentile interval of {ACCURACY_BOOTSTRAP} bootstrap resamples of the held-out trials "
                      "(each trial with its frames one cluster, resampled within each session; seeded by "
                      "classify.seed)")


def train_group(entries: Sequence[Mapping[str, Any]], targets_path: str | Path, section: Mapping[str, Any] | ClassifyParams,
                out_dir: str | Path, *, seed: int = 0, group: str = "", stop_at: int | None = None,
                shuffle_labels: bool = False, control_dir: str | Path | None = None,
                control_members: int = 1, scratch_dir: str | None = None) -> dict:
    """Train the cross-fitted classifier of one target group and write its outputs.

    ``entries``: one mapping per session (session, condition, motion, stim_log, targets,
    [footprints]). Writes ``out_dir/model.pt`` (every fold's weights), ``out_dir/metrics.json``
    and ``out_dir/predictions.npz``; checkpoints in ``out_dir/checkpoints/``. Returns the metrics.
    ``shuffle_labels``: the shuffled-label control (:func:`shuffle_trial_labels`), trained exactly
    like the real classifier; its held-out metrics are scored against the stim log's labels.
    ``control_dir``: after the real classifier, also that control (``control_members`` members, all
    else as the real one) into ``control_dir``, with the same files; the same models and metrics as
    a second call with ``shuffle_labels`` would give. Returns the real classifier's metrics.
    ``scratch_dir``: overrides the section's ``classify.scratch_dir`` (the workflow passes it apart from
    the rule's params, so that moving the scratch directory does not re-run training).
    """
    if shuffle_labels and control_dir is not None:
        raise ValueError("shuffle_labels trains the control alone into out_dir; control_dir trains both")
    cfg = dict(section) if not isinstance(section, ClassifyParams) else dataclasses.asdict(section)
    cfg["seed"] = int(cfg.get("seed", 0)) + int(seed)
    if scratch_dir is not None:
        cfg["scratch_dir"] = scratch_dir
    p = ClassifyParams.from_config(cfg)
    if p.num_threads:
        torch.set_num_threads(p.num_threads)
    targets = read_targets(targets_path)
    for e in entries:
        other = read_targets(e["targets"])
        if not other.same_as(targets):
            raise CalflowInputError(
                f"session {e['session']}'s targets differ from {targets_path} of its group {group!r}",
                file=e["targets"], fix="give the sessions of one animal the same targets table, or set "
                                       "classify.group_by: session")
    with contextlib.ExitStack() as stack:  # every session's scratch file is deleted, also when a step fails
        data = [stack.enter_context(load_session(e, targets, p)) for e in entries]
        if not shuffle_labels:
            metrics = _train_loaded(data, entries, targets, p, Path(out_dir), group, stop_at)
            if control_dir is None:
                return metrics
        for s in data:
            s.true_labels = s.labels
            s.labels = shuffle_trial_labels(s.labels, s.trials, p.seed, s.session)
        if shuffle_labels:
            return _train_loaded(data, entries, targets, p, Path(out_dir), group, stop_at, CONTROL)
        _train_loaded(data, entries, targets, dataclasses.replace(p, members=int(control_members)),
                      Path(control_dir), group, stop_at, CONTROL)
        return metrics


def _spread(values: Sequence[float | None]) -> dict:
    v = np.array([x for x in values if x is not None], np.float64)
    if not v.size:
        return {"min": None, "max": None, "std": None}
    return {"min": float(v.min()), "max": float(v.max()), "std": float(v.std())}


def _train_loaded(data: Sequence[SessionData], entries: Sequence[Mapping[str, Any]], targets: Targets,
                  p: ClassifyParams, out_dir: Path, group: str, stop_at: int | None,
                  control: str | None = None) -> dict:
    """:func:`train_group` once its sessions are loaded."""
    shapes = {s.frames.shape[1:] for s in data}
    if len(shapes) > 1:
        raise CalflowInputError(f"the group's sessions have different frame shapes {sorted(shapes)}",
                                file=entries[0]["motion"], fix="group only sessions of one field of view")
    if stop_at is not None:
        for f in range(p.n_folds):
            train_fold(data, p, f, out_dir / "checkpoints", stop_at=stop_at)
        return {"stopped_at": stop_at}
    models, runs = [], []
    for f in range(p.n_folds):
        m, r = train_fold(data, p, f, out_dir / "checkpoints")
        models.append(m)
        runs.append(r)
    ids = targets.ids
    K = p.members
    per_session, preds, member_preds = {}, {}, {}
    fold_train = np.zeros((len(models), 2))  # per fold: correct and stimulated training frames
    for s in data:
        ff = s.trials.frame_fold
        prob_members = np.zeros((len(s.labels), K, s.labels.shape[1]), np.float32)
        train_m = []
        for f, m in enumerate(models):
            sel = np.flatnonzero(ff == f)
            prob_members[sel] = predict(m, s, sel, members=True)
            tr = np.flatnonzero(ff != f)[::TRAIN_METRIC_STRIDE]
            fit = frame_metrics(predict(m, s, tr), s.labels[tr], ids)  # the labels it trained on
            train_m.append(fit)
            if fit["accuracy"] is not None:
                fold_train[f] += (fit["accuracy"] * fit["n_stimulated_frames"], fit["n_stimulated_frames"])
        prob_test = prob_members.mean(axis=1)  # the ensemble: mean over members of the sigmoid
        test = frame_metrics(prob_test, s.eval_labels, ids)
        member_test = [frame_metrics(prob_members[:, k], s.eval_labels, ids) for k in range(K)]
        train_acc = [t["accuracy"] for t in train_m if t["accuracy"] is not None]
        member_acc = [t["accuracy"] for t in member_test]
        member_target = [t["target_accuracy"] for t in member_test]
        per_session[s.session] = {"condition": s.condition, "test": test,
                                  "test_trials": trial_counts(prob_test, s.eval_labels, s.trials.unit,
                                                              len(s.trials.start)),
                                  "train_accuracy": float(np.mean(train_acc)) if train_acc else None,
                                  "train_none_accuracy": float(np.mean([t["none_accuracy"] for t in train_m
                                                                        if t["none_accuracy"] is not None])),
                                  "n_trials": int(len(s.trials.start)),
                                  "members": {"test_accuracy": member_acc, "test_accuracy_spread": _spread(member_acc),
                                              "test_target_accuracy": member_target,
                                              "test_target_accuracy_spread": _spread(member_target)}}
        if s.true_labels is not None:  # the control: held-out frames against the labels it was trained on
            trained_on = frame_metrics(prob_test, s.labels, ids)
            per_session[s.session]["test_vs_shuffled_labels"] = {
                k: trained_on[k] for k in ("accuracy", "target_accuracy", "missed_as_none", "none_accuracy")}
        preds[s.session] = prob_test
        member_preds[s.session] = prob_members
    per_condition: dict[str, dict] = {}
    for cond in sorted({s.condition for s in data}):
        ss = [s for s in data if s.condition == cond]
        lab = np.concatenate([s.eval_labels for s in ss])
        pr = np.concatenate([preds[s.session] for s in ss])
        m = frame_metrics(pr, lab, ids)
        pm = np.concatenate([member_preds[s.session] for s in ss])
        mm = [frame_metrics(pm[:, k], lab, ids) for k in range(K)]
        trials = [per_session[s.session]["test_trials"] for s in ss]  # one stratum per session, trials as clusters
        ci = clustered_accuracy([[(t["correct"], t["stimulated_frames"]) for t in trials]],
                                n_bootstrap=ACCURACY_BOOTSTRAP, level=0.95, seed=p.seed)
        per_condition[cond] = {"sessions": [s.session for s in ss], "test_accuracy": m["accuracy"],
                               "test_accuracy_ci": ci["ci"], "n_trials": ci["n_trials"],
                               "test_accuracy_ci_method": ACCURACY_CI_METHOD,
                               "test_target_accuracy": m["target_accuracy"], "test_missed_as_none": m["missed_as_none"],
                               "test_none_accuracy": m["none_accuracy"],
                               "chance_target_accuracy": m["chance_target_accuracy"],
                               "train_accuracy": float(np.mean([per_session[s.session]["train_accuracy"] for s in ss])),
                               "per_target": m["per_target"],
                               "member_test_accuracy": [x["accuracy"] for x in mm],
                               "member_test_accuracy_spread": _spread([x["accuracy"] for x in mm]),
                               "member_test_target_accuracy": [x["target_accuracy"] for x in mm],
                               "member_test_target_accuracy_spread": _spread([x["target_accuracy"] for x in mm])}
    lab_all = np.concatenate([s.eval_labels for s in data])
    pm_all = np.concatenate([member_preds[s.session] for s in data])
    m_all = [frame_metrics(pm_all[:, k], lab_all, ids) for k in range(K)]
    ens_all = frame_metrics(pm_all.mean(axis=1), lab_all, ids)
    members_summary = {
        "members": K, "ensemble_test_accuracy": ens_all["accuracy"],
        "ensemble_test_target_accuracy": ens_all["target_accuracy"],
        "chance_target_accuracy": ens_all["chance_target_accuracy"],
        "test_accuracy": [x["accuracy"] for x in m_all], "test_accuracy_spread": _spread([x["accuracy"] for x in m_all]),
        "test_target_accuracy": [x["target_accuracy"] for x in m_all],
        "test_target_accuracy_spread": _spread([x["target_accuracy"] for x in m_all]),
        "rule": "every member's held-out predictions on all the group's frames; the ensemble's probability is the "
                "mean over members of the sigmoid"}
    arch = runs[0]["arch"]
    # the scratch dir is a path of the training machine; the gradcam job uses its own
    params_meta = {k: v for k, v in dataclasses.asdict(p).items() if k != "scratch_dir"}
    meta = {"group": group, "sessions": [s.session for s in data], "target_ids": ids, "params": params_meta,
            "downsample": p.downsample, "folds": p.n_folds, "outputs": [*ids, NONE], "members": K,
            "control": control}
    save_fold_models(out_dir / "model.pt", models, arch, meta)
    warnings = untrained_folds(fold_train, group) if control is None else []  # the control is not meant to learn
    for w in warnings:
        log.warning(w)
    metrics = {"group": group, "target_ids": ids, "outputs": [*ids, NONE], "rule": "top prediction among the "
               "stimulated targets, on frames with a stimulation (held-out fold of every frame)",
               "device": str(resolve_device(p.device, key="classify.device")), "arch": arch, "n_folds": p.n_folds,
               "control": control, "members": members_summary,
               "sessions": per_session, "conditions": per_condition, "warnings": warnings,
               "training": [{k: r[k] for k in ("fold", "iterations", "seconds", "resumed_from", "history")} for r in runs]}
    if control is not None:
        metrics["control_rule"] = ("trained on shuffled trial labels (each trial labelled with another trial's "
                                   "pattern of the same session); test metrics against the stim log's labels, "
                                   "test_vs_shuffled_labels against the labels it was trained on")
    write_classifier_outputs(out_dir, metrics, preds)
    return metrics
