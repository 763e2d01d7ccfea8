"""Ground-truth simulator: two-photon-like calcium-imaging sessions with everything known.

The test and demo data of calflow: every stage is evaluated against it. A session is generated in
two steps:

1. :func:`simulate` draws everything that is small (cells, spikes, calcium, neuropil and
   background traces, motion, the photostimulation schedule, the connectivity matrix W) into a
   :class:`GroundTruth`. Memory is O(K*T + Y*X) - no movie.
2. :func:`render_frames` turns any frame range of that ground truth into movie frames; the
   result for a frame depends only on (truth, frame index), never on the block it was rendered
   in. :func:`write_session` streams the movie to ``movie.tif`` block by block and writes the
   ground-truth files next to it (see ``docs/simulate.md`` for every file, unit and shape).

Conventions (used by every stage that is evaluated against this simulator):

* Images are indexed ``[y, x]`` (row, column); point coordinates are ``(y, x)`` in pixels,
  pixel centres at integers. The *world* (template) frame is the un-moved FOV; ``footprints``,
  ``centers``, ``masks.tif`` and ``targets.csv`` are in world coordinates. With a per-session
  FOV re-placement (``fov_offset``, ``fov_rotation_deg``) the world is the animal's reference
  FOV and the re-placement is a static part of every frame's displacement.
* Per-session nuisance (expression, detector, neuropil, FOV re-placement, bleaching, stimulation
  artefact, off-target excitation): :func:`draw_nuisance`; study designs: :func:`study_params`.
* Motion: a displacement ``(dy, dx)`` moves the content. The world point ``q`` appears at
  ``q + D_t(q)`` in frame t; equivalently ``frame_t(p) = world_t(p - D_t^frame(p))``. For
  rigid motion the two fields are the same vector, ``rigid_shifts[t]``.
* Connectivity: ``W[i, j] >= 0`` is the strength of the connection *from* source cell ``i``
  (row, the stimulated / presynaptic cell) *to* cell ``j`` (column, the driven cell).
* Time: frame t is at ``t / fps`` seconds; every (K, T) trace is sampled at the frames.

Modules (each imports only those above it): :mod:`~calflow.simulate.params` (:class:`SimParams`,
nuisance, study designs, random streams), :mod:`~calflow.simulate.truth` (:class:`GroundTruth`),
:mod:`~calflow.simulate.model` (:func:`simulate`, :func:`evoked_calcium`),
:mod:`~calflow.simulate.motion_field` (true displacements), :mod:`~calflow.simulate.render`
(movie frames), :mod:`~calflow.simulate.files` (``ground_truth.npz``, session directories),
:mod:`~calflow.simulate.cli` (``calflow simulate``, ``python -m calflow.simulate``). The names
below are re-exported here.
"""

# ``X as X``: importable from calflow.simulate as before the split but not in __all__ (the tests use _stim_drive)
from calflow.simulate.cli import add_arguments, main_simulate, params_from_args, run_from_args
from calflow.simulate.files import GENERATOR as GENERATOR
from calflow.simulate.files import SESSION_FILES, load_ground_truth, save_ground_truth, write_session
from calflow.simulate.model import _stim_drive as _stim_drive
from calflow.simulate.model import evoked_calcium, simulate
from calflow.simulate.motion_field import dense_displacement, fov_footprints, true_displacement
from calflow.simulate.params import NUISANCE, SimParams, draw_nuisance, study_params
from calflow.simulate.params import UINT16_MAX as UINT16_MAX
from calflow.simulate.render import iter_movie, render_frames
from calflow.simulate.truth import GroundTruth

__all__ = [
    "NUISANCE",
    "SESSION_FILES",
    "GroundTruth",
    "SimParams",
    "add_arguments",
    "dense_displacement",
    "draw_nuisance",
    "evoked_calcium",
    "fov_footprints",
    "iter_movie",
    "load_ground_truth",
    "main_simulate",
    "params_from_args",
    "render_frames",
    "run_from_args",
    "save_ground_truth",
    "simulate",
    "study_params",
    "true_displacement",
    "write_session",
]
