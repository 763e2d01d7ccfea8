"""Stimulation classifier (stage ``train_classifier``): which target cell(s) were photo-stimulated in each frame.

A small CNN maps a window of motion-corrected frames to N + 1 logits, one per target of the
session's targets table and a last "none"; one cross-fitted seed ensemble per target group (an
animal). See docs/classify.md. Submodules: :mod:`~calflow.classify.params` (config section),
:mod:`~calflow.classify.data` (scratch movie, masks, labels, folds), :mod:`~calflow.classify.model`
(networks, model file), :mod:`~calflow.classify.train` (training loop, predictions, metrics),
:mod:`~calflow.classify.store` (metrics.json and predictions.npz, torch-free),
:mod:`~calflow.classify.stage` (what the workflow rules call). The names below are re-exported here,
imported on first use: importing :mod:`calflow.classify.params` (the workflow does, for the section's
keys, when it parses) does not import torch.
"""

from calflow.lazy import lazy_exports

# name -> module it is defined in
_EXPORTS = {
    **dict.fromkeys(("ScratchMovie", "SessionData", "cell_mask", "downsample_mask", "load_frames", "load_session",
                     "open_movie", "shuffle_trial_labels", "target_mask", "training_frames", "window"),
                    "calflow.classify.data"),
    **dict.fromkeys(("StimEnsemble", "StimNet", "build_ensemble", "build_model", "crop_hw", "ensemble_state",
                     "init_ensemble", "load_fold_models", "member_seed", "save_fold_models"), "calflow.classify.model"),
    **dict.fromkeys(("MAX_MEMBERS", "ClassifyParams", "scratch_root"), "calflow.classify.params"),
    **dict.fromkeys(("CONTROL", "train_group"), "calflow.classify.stage"),
    **dict.fromkeys(("read_classifier_metrics", "read_predictions", "write_classifier_outputs"),
                    "calflow.classify.store"),
    **dict.fromkeys(("ACCURACY_BOOTSTRAP", "UNTRAINED_ACCURACY", "frame_metrics", "pass_rows", "predict",
                     "stimulated_correct", "train_fold", "trial_counts", "untrained_folds"), "calflow.classify.train"),
    **dict.fromkeys(("NONE", "Targets", "TrialFolds", "find_trials", "read_labels", "read_targets"),
                    "calflow.stimulation"),
}
_SUBMODULES = ("data", "model", "params", "stage", "store", "train")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
