"""Population decoding (stage ``decode``): which stimulus a trial was, from the neurons' responses.

As the 10,000-neuron visual-stimulus study did it: trials from the stim log or stimulus table,
responses (window minus baseline) z-scored by spontaneous activity with its top PCs projected
out, then every classifier against a dummy, scored out of fold with p-values (docs/decode.md,
"Algorithm"). Submodules, each importing only those before it: :mod:`~calflow.decode.params`
(config section), :mod:`~calflow.decode.trials` (trials, spontaneous frames, response matrix),
:mod:`~calflow.decode.cleaning` (spontaneous z-scoring and PCs), :mod:`~calflow.decode.classifiers`,
:mod:`~calflow.decode.scoring` (folds, tests, p-values), :mod:`~calflow.decode.store` (cnmf.zarr
in, decode.json), :mod:`~calflow.decode.plots` and :mod:`~calflow.decode.stage` (what the rule
calls). scikit-learn, scipy and matplotlib are imported when first used, not here.
"""

from calflow.decode.classifiers import (
    BATCH_LOGISTIC,
    LOGISTIC_C,
    fit_predict,
    logistic_batch,
    make_classifier,
)
from calflow.decode.cleaning import PC_FRAMES, PC_NEURONS, SD_FLOOR, Cleaning, spontaneous_cleaning
from calflow.decode.params import CLASSIFIERS, CV_SCHEMES, SPONTANEOUS, TRACES, DecodeParams
from calflow.decode.plots import confusion_figure
from calflow.decode.scoring import (
    FOLD_TEST_DRAWS,
    fold_features,
    fold_test,
    make_folds,
    score_classifiers,
    wilson_ci,
)
from calflow.decode.stage import decode, decode_session
from calflow.decode.store import decay_time_s, load_traces, read_decode, write_decode
from calflow.decode.trials import (
    SPONT_LABEL,
    Trials,
    read_trials,
    response_matrix,
    spontaneous_frames,
    trials_from_truth,
)

__all__ = [
    "BATCH_LOGISTIC", "CLASSIFIERS", "CV_SCHEMES", "FOLD_TEST_DRAWS", "LOGISTIC_C", "PC_FRAMES", "PC_NEURONS",
    "SD_FLOOR", "SPONTANEOUS", "SPONT_LABEL", "TRACES", "Cleaning", "DecodeParams", "Trials", "confusion_figure",
    "decay_time_s", "decode", "decode_session", "fit_predict", "fold_features", "fold_test", "load_traces",
    "logistic_batch", "make_classifier", "make_folds", "read_decode", "read_trials", "response_matrix",
    "score_classifiers", "spontaneous_cleaning", "spontaneous_frames", "trials_from_truth", "wilson_ci",
    "write_decode",
]
