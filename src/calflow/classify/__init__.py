"""Stimulation classifier (stage ``train_classifier``): which target cell(s) were photo-stimulated in each frame.

A small CNN maps a window of motion-corrected frames to N + 1 logits, one per target of the
session's targets table and a last "none"; one cross-fitted seed ensemble per target group (an
animal). See docs/classify.md. Submodules: :mod:`~calflow.classify.params` (config section),
:mod:`~calflow.classify.data` (scratch movie, masks, labels, folds), :mod:`~calflow.classify.model`
(networks, model file), :mod:`~calflow.classify.train` (training loop, predictions, metrics),
:mod:`~calflow.classify.stage` (what the workflow rules call). The names below are re-exported here.
"""

from calflow.classify.data import (
    ScratchMovie,
    SessionData,
    cell_mask,
    downsample_mask,
    load_frames,
    load_session,
    open_movie,
    shuffle_trial_labels,
    target_mask,
    training_frames,
    window,
)
from calflow.classify.model import (
    StimEnsemble,
    StimNet,
    build_ensemble,
    build_model,
    crop_hw,
    ensemble_state,
    init_ensemble,
    load_fold_models,
    member_seed,
    save_fold_models,
)
from calflow.classify.params import MAX_MEMBERS, ClassifyParams, scratch_root
from calflow.classify.stage import CONTROL, train_group
from calflow.classify.train import (
    ACCURACY_BOOTSTRAP,
    UNTRAINED_ACCURACY,
    frame_metrics,
    pass_rows,
    predict,
    stimulated_correct,
    train_fold,
    trial_counts,
    untrained_folds,
)
from calflow.stimulation import NONE, Targets, TrialFolds, find_trials, read_labels, read_targets

__all__ = [
    "ACCURACY_BOOTSTRAP", "CONTROL", "MAX_MEMBERS", "NONE", "UNTRAINED_ACCURACY", "ClassifyParams", "ScratchMovie",
    "SessionData", "StimEnsemble", "StimNet", "Targets", "TrialFolds", "build_ensemble", "build_model", "cell_mask", "crop_hw",
    "downsample_mask", "ensemble_state", "find_trials", "frame_metrics", "init_ensemble", "load_fold_models",
    "load_frames", "load_session", "member_seed", "open_movie", "pass_rows", "predict", "read_labels",
    "read_targets", "save_fold_models", "scratch_root", "shuffle_trial_labels", "stimulated_correct", "target_mask",
    "train_fold", "train_group", "training_frames", "trial_counts", "untrained_folds", "window",
]
