"""Model-free control of the condition comparison: the stimulus-triggered average (STA) map of every
trial (stage ``stim_maps``; docs/compare.md). For every stimulation trial (a run of frames with one
non-empty target set, as the classifier sees it, :func:`calflow.stimulation.find_trials`) the map is
the mean of the motion-corrected frames from the trial's first stimulated frame to ``tail_frames``
after its last, minus the mean of the ``baseline_frames`` frames before it, block-averaged by
``downsample``. No network is involved, so the maps cannot depend on a training seed;
:mod:`calflow.compare` runs them through the same ZNCC statistic and animal-level test as the
Grad-CAM maps. Submodules: :mod:`~calflow.stim_maps.params` (config section),
:mod:`~calflow.stim_maps.sta` (the streamed STA), :mod:`~calflow.stim_maps.store` (``stim_maps.zarr``'s
writer and typed reader) and :mod:`~calflow.stim_maps.stage` (:func:`session_stim_maps`, what the rule
calls). The names below are re-exported here; none of them imports torch or matplotlib.
"""

from calflow.stim_maps.params import StimMapsParams
from calflow.stim_maps.sta import compute_trial_maps, trial_weights
from calflow.stim_maps.stage import session_stim_maps
from calflow.stim_maps.store import ARRAYS, StimMaps, read_stim_maps, write_stim_maps

__all__ = ["ARRAYS", "StimMaps", "StimMapsParams", "compute_trial_maps", "read_stim_maps", "session_stim_maps",
           "trial_weights", "write_stim_maps"]
