"""Grad-CAM maps of the stimulation classifier and ZNCC matrices between stimulation patterns (stage
``gradcam``; docs/classify.md). Submodules: :mod:`~calflow.gradcam.params` (config section),
:mod:`~calflow.gradcam.cam` (Grad-CAM, trial and pattern maps), :mod:`~calflow.gradcam.similarity`
(ZNCC), :mod:`~calflow.gradcam.traces` (the CNMF trace correlation), :mod:`~calflow.gradcam.expected`
(the true maps of simulated sessions, for validation), :mod:`~calflow.gradcam.store` (the map store's
writer and typed reader), :mod:`~calflow.gradcam.plots` (figures) and :mod:`~calflow.gradcam.stage`
(:func:`session_gradcam`, what the rule calls). The names below are re-exported here, imported on
first use: ``params``, ``similarity``, ``expected``, ``traces`` and ``store`` do not import torch.
"""

from calflow.lazy import lazy_exports

# name -> module it is defined in
_EXPORTS = {
    **dict.fromkeys(("METHODS", "METHOD_NAMES", "SCORES", "GradcamParams"), "calflow.gradcam.params"),
    **dict.fromkeys(("display_maps", "get_layer", "grad_cam", "pattern_means", "pattern_name", "score_weights",
                     "trial_maps", "upsample"), "calflow.gradcam.cam"),
    **dict.fromkeys(("maps_for_zncc", "offdiag", "zncc", "zncc_matrix"), "calflow.gradcam.similarity"),
    "cnmf_target_correlation": "calflow.gradcam.traces",
    **dict.fromkeys(("expected_response_maps", "relative_stim_drive", "true_response_maps"),
                    "calflow.gradcam.expected"),
    **dict.fromkeys(("ARRAYS", "GradcamMaps", "read_gradcam", "write_gradcam"), "calflow.gradcam.store"),
    **dict.fromkeys(("overlay_figure", "plot_session", "zncc_figure"), "calflow.gradcam.plots"),
    "session_gradcam": "calflow.gradcam.stage",
}
_SUBMODULES = ("cam", "expected", "params", "plots", "similarity", "stage", "store", "traces")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
