"""Motion correction (stage ``motion``): rigid + piecewise-rigid registration in torch, streamed.

A shift ``(dy, dx)`` px is the displacement of the content, shared with :mod:`calflow.simulate`:
``frame_t(y, x) = template(y - dy, x - dx)``; correction samples frame ``t`` at ``(y + dy, x + dx)``.
See docs/motion.md. Submodules, each importing only those before it: :mod:`~calflow.motion.params`
(config section), :mod:`~calflow.motion.patches` (patch grid, dense field),
:mod:`~calflow.motion.register` (FFT correlation, sub-pixel peaks, warps),
:mod:`~calflow.motion.template`, :mod:`~calflow.motion.quality` (crispness, correlation),
:mod:`~calflow.motion.store` (motion.zarr's writer and typed readers, without torch),
:mod:`~calflow.motion.split` (the plan and part stores of a split run, ``motion.split_frames`` > 0),
:mod:`~calflow.motion.stage` (:func:`correct_motion`, what the workflow rule calls, and the split run's
``motion_template`` / ``motion_chunk`` / ``motion_gather``) and
:mod:`~calflow.motion.plots` (figures). The names below are re-exported here, imported on first use:
importing :mod:`calflow.motion.store` does not import torch, nor does ``plot_motion``'s matplotlib
load before it is used.
"""

from calflow.lazy import lazy_exports

# name -> module it is defined in
_EXPORTS = {
    "MotionParams": "calflow.motion.params",
    "PatchGrid": "calflow.motion.patches",
    **dict.fromkeys(("Registration", "effective_batch", "fourier_shift", "search_radius", "window_warning"),
                    "calflow.motion.register"),
    "build_template": "calflow.motion.template",
    "crispness": "calflow.motion.quality",
    **dict.fromkeys(("IMAGE_ARRAYS", "SHIFT_ARRAYS", "SHIFT_CONVENTION", "MotionImages", "MotionRecord",
                     "MotionShifts", "movie_writer", "read_images", "read_motion", "read_shifts",
                     "write_attrs", "write_motion"), "calflow.motion.store"),
    **dict.fromkeys(("correct_motion", "motion_template", "motion_chunk", "motion_gather"), "calflow.motion.stage"),
    **dict.fromkeys(("SplitPlan", "plan_split", "read_plan", "read_template_store", "check_parts"),
                    "calflow.motion.split"),
    "plot_motion": "calflow.motion.plots",
}
_SUBMODULES = ("params", "patches", "plots", "quality", "register", "split", "stage", "store", "template")

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
