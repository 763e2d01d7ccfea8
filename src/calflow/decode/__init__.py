"""Population decoding (stage ``decode``): which stimulus a trial was, from the neurons' responses.

As the 10,000-neuron visual-stimulus study did it: trials from the stim log or stimulus table,
responses (window minus baseline) z-scored by spontaneous activity with its top PCs projected
out, then every classifier against a dummy, scored out of fold with p-values (docs/decode.md,
"Algorithm"). Submodules, each importing only those before it: :mod:`~calflow.decode.params`
(config section), :mod:`~calflow.decode.trials` (trials, spontaneous frames, response matrix),
:mod:`~calflow.decode.cleaning` (spontaneous z-scoring and PCs), :mod:`~calflow.decode.classifiers`,
:mod:`~calflow.decode.scoring` (folds, tests, p-values), :mod:`~calflow.decode.store` (cnmf.zarr
in, decode.json), :mod:`~calflow.decode.plots` and :mod:`~calflow.decode.stage` (what the rule
calls). The names below are re-exported here and imported on first use, so importing a light submodule
(:mod:`~calflow.decode.store`, which the report reads decode.json with) pulls in neither
scikit-learn nor matplotlib.
"""

from calflow.lazy import lazy_exports

# name -> module it is defined in
_EXPORTS = {
    **dict.fromkeys(("BATCH_LOGISTIC", "LOGISTIC_C", "fit_predict", "logistic_batch", "make_classifier"),
                    "calflow.decode.classifiers"),
    **dict.fromkeys(("PC_FRAMES", "PC_NEURONS", "SD_FLOOR", "Cleaning", "spontaneous_cleaning"),
                    "calflow.decode.cleaning"),
    **dict.fromkeys(("CLASSIFIERS", "CV_SCHEMES", "SPONTANEOUS", "TRACES", "DecodeParams"), "calflow.decode.params"),
    "confusion_figure": "calflow.decode.plots",
    **dict.fromkeys(("FOLD_TEST_DRAWS", "fold_features", "fold_test", "make_folds", "score_classifiers", "wilson_ci"),
                    "calflow.decode.scoring"),
    **dict.fromkeys(("decode", "decode_session"), "calflow.decode.stage"),
    **dict.fromkeys(("decay_time_s", "load_traces", "read_decode", "write_decode"), "calflow.decode.store"),
    **dict.fromkeys(("SPONT_LABEL", "Trials", "read_trials", "response_matrix", "spontaneous_frames",
                     "trials_from_truth"), "calflow.decode.trials"),
}
_SUBMODULES = ("classifiers", "cleaning", "params", "plots", "scoring", "stage", "store", "trials")

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
