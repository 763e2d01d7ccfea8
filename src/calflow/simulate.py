"""Ground-truth simulator: two-photon-like calcium-imaging sessions with everything known.

A session is generated in two steps:

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
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
import typing
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage, signal
from scipy.interpolate import CubicSpline
from scipy.special import expit

from calflow import __version__
from calflow.errors import CalflowInputError
from calflow.io import atomic_output

log = logging.getLogger(__name__)

__all__ = [
    "NUISANCE",
    "SESSION_FILES",
    "GroundTruth",
    "SimParams",
    "add_arguments",
    "dense_displacement",
    "draw_nuisance",
    "iter_movie",
    "load_ground_truth",
    "main_simulate",
    "render_frames",
    "run_from_args",
    "save_ground_truth",
    "simulate",
    "study_params",
    "true_displacement",
    "write_session",
]

#: Files written by :func:`write_session` (name -> key in the returned dict).
SESSION_FILES = {
    "movie": "movie.tif",
    "ground_truth": "ground_truth.npz",
    "stim_log": "stim_log.csv",
    "targets": "targets.csv",
    "masks": "masks.tif",
    "params": "params.json",
}
GENERATOR = "calflow.simulate"
UINT16_MAX = 65535

# Independent random streams, one per model component: changing one knob (e.g. w_gain or the
# motion switches) leaves every other component bit-identical for the same seed.
_STREAMS = {
    "layout": 1,
    "brightness": 2,
    "kinetics": 3,
    "rates": 4,
    "population": 5,
    "spikes": 6,
    "neuropil": 7,
    "background": 8,
    "rigid": 9,
    "nonrigid": 10,
    "stim": 11,
    "connectivity": 12,
    "noise": 13,
    "nuisance": 14,
}
_PAIR_FIELDS = ("nonrigid_grid", "fov_offset")  # tuple fields: lists in JSON / to_dict


_TIME_CHUNK = 4096  # frames per chunk when drawing spikes (part of the random-stream definition)


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream], *(int(e) for e in extra)])


def _p(default: Any, help: str) -> Any:  # noqa: A002 - dataclass field with a help text
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimParams:
    """Every knob of the simulator. Units are in the field names or help texts.

    Fluorescence is in *F units*: a cell's mean resting brightness is ``cell_brightness``
    (default 1) and ``calcium`` adds to it; photons per pixel per frame are
    ``photons_per_unit * F``. ``dataclasses.replace(params, w_gain=2.0)`` makes a condition.
    """

    # movie
    n_frames: int = _p(1000, "number of frames T")
    height: int = _p(128, "FOV height Y in pixels")
    width: int = _p(128, "FOV width X in pixels")
    fps: float = _p(30.0, "frame rate in Hz")
    # cells
    n_cells: int = _p(40, "number of cells K")
    radius_min: float = _p(4.0, "smallest cell radius in px (geometric mean of the two semi-axes)")
    radius_max: float = _p(6.0, "largest cell radius in px; radii are uniform in [radius_min, radius_max]")
    ellipticity: float = _p(0.3, "minor/major axis ratio is uniform in [1 - ellipticity, 1] (0 = discs)")
    edge_softness: float = _p(0.7, "width in px of the sigmoid soma edge")
    nucleus_fraction: float = _p(0.45, "nucleus radius as a fraction of the cell radius")
    nucleus_depth: float = _p(0.35, "nucleus darkening at its centre, 0 = no nucleus, <1")
    overlap_fraction: float = _p(0.15, "fraction of cells placed to overlap an already placed neighbour (<=0.5)")
    cell_brightness: float = _p(1.0, "mean resting fluorescence f0 of a cell, F units")
    brightness_cv: float = _p(0.3, "coefficient of variation of f0 across cells (log-normal)")
    # activity
    spike_rate_hz: float = _p(0.5, "mean spontaneous firing rate in Hz")
    rate_cv: float = _p(0.5, "coefficient of variation of the spontaneous rate across cells (log-normal)")
    population_coupling: float = _p(0.3, "std of the shared slow log-rate modulation (correlated activity)")
    population_tau_s: float = _p(2.0, "time constant of the shared rate modulation in s")
    tau_rise_s: float = _p(0.05, "calcium rise time constant in s (0 = instantaneous rise, AR(1))")
    tau_decay_s: float = _p(0.6, "calcium decay time constant in s")
    tau_jitter: float = _p(0.1, "relative per-cell jitter of both time constants (0 = one shared g)")
    spike_amplitude: float = _p(0.6, "peak calcium transient of one spike, F units (mean over cells)")
    amplitude_cv: float = _p(0.3, "coefficient of variation of the spike amplitude across cells")
    # neuropil, background, baseline
    neuropil_level: float = _p(0.3, "mean neuropil fluorescence, F units")
    neuropil_coupling: float = _p(1.0, "relative neuropil modulation per relative population-rate modulation")
    neuropil_noise: float = _p(0.15, "relative slow fluctuation of the neuropil level")
    neuropil_tau_s: float = _p(3.0, "time constant of the neuropil's own slow fluctuation in s")
    neuropil_scale_px: float = _p(10.0, "spatial smoothness (gaussian sigma) of the neuropil map in px")
    bg_rank: int = _p(2, "rank of the non-negative background (0 = none)")
    bg_level: float = _p(0.4, "mean level of each background component, F units")
    bg_fluct: float = _p(0.15, "relative slow fluctuation of each background component")
    bg_tau_s: float = _p(20.0, "time constant of the background fluctuations in s")
    bg_scale: float = _p(0.25, "spatial smoothness of the background maps as a fraction of the FOV size")
    baseline: float = _p(0.2, "spatially uniform baseline fluorescence (autofluorescence), F units")
    # detector
    photons_per_unit: float = _p(30.0, "expected photons per pixel per frame for 1 F unit")
    gain: float = _p(2.0, "detector gain in digital units (DU) per photon")
    offset: float = _p(200.0, "detector offset (dark level) in DU")
    read_noise: float = _p(6.0, "gaussian read-noise std in DU")
    # motion
    motion: bool = _p(True, "master switch for all motion (rigid and non-rigid)")
    max_shift: float = _p(3.0, "bound on each rigid shift component in px")
    rigid_std: float = _p(1.0, "std of the rigid random walk before bounding, px")
    rigid_tau_s: float = _p(1.5, "correlation time of the rigid motion in s")
    nonrigid: bool = _p(True, "switch for the non-rigid deformation")
    nonrigid_amplitude: float = _p(1.0, "std of each non-rigid control displacement in px")
    nonrigid_grid: tuple[int, int] = _p((4, 4), "non-rigid control grid (gy, gx), >= 2 each")
    nonrigid_tau_s: float = _p(2.0, "correlation time of the non-rigid deformation in s")
    # photostimulation and connectivity
    n_targets: int = _p(8, "number of photostimulation targets (cells)")
    n_pairs: int | None = _p(None, "number of two-target patterns besides the single targets; "
                                   "None = min(n_targets, all pairs)")
    trial_frames: int = _p(10, "stimulation duration of a trial in frames")
    iti_frames: int = _p(20, "inter-trial interval in frames (no stimulation)")
    iti_jitter_frames: int = _p(5, "extra random 0..n frames added to each inter-trial interval")
    stim_start_frame: int = _p(30, "first frame of the first trial")
    n_blocks: int | None = _p(None, "blocks of trials (each pattern once per block); None = as many as fit")
    stim_gain: float = _p(15.0, "extra firing rate in Hz of a target while it is stimulated")
    connection_prob: float = _p(0.1, "probability of a connection i -> j in W")
    w_min: float = _p(0.2, "smallest non-zero W entry")
    w_max: float = _p(0.8, "largest W entry")
    w_gain: float = _p(1.0, "condition knob: multiplies W (e.g. 1.5-2 for a strengthened-W condition)")
    w_delay_s: float = _p(0.05, "delay in s between a trial and the driven cells' rate increase")
    # per-session nuisance (defaults: none; see draw_nuisance and docs/simulate.md)
    expression_scale: float = _p(1.0, "session factor on every cell's fluorescence f0 + calcium (GCaMP "
                                      "expression level); not on neuropil/background")
    fov_offset: tuple[float, float] = _p((0.0, 0.0), "static (dy, dx) px re-placement of the FOV for the "
                                                     "session: the world moves by this in every frame")
    fov_rotation_deg: float = _p(0.0, "static rotation of the FOV content in degrees about the FOV centre, "
                                      "from +y towards +x (counter-clockwise on screen)")
    bleach_tau_s: float = _p(0.0, "photobleaching time constant in s: cells and neuropil decay as "
                                  "exp(-t / bleach_tau_s); 0 = none")
    stim_artifact: float = _p(0.0, "light artefact in F units added uniformly to every pixel of every frame "
                                   "in which a target is stimulated")
    offtarget_radius_px: float = _p(0.0, "off-target excitation radius r in px: non-target cells get "
                                         "offtarget_gain * stim_gain * exp(-d^2 / 2r^2) Hz, d <= 3r; 0 = none")
    offtarget_gain: float = _p(0.5, "off-target drive at distance 0 as a fraction of stim_gain")

    @property
    def pairs_count(self) -> int:
        """Number of two-target patterns actually used (resolves ``n_pairs=None``)."""
        if self.n_pairs is not None:
            return int(self.n_pairs)
        return min(self.n_targets, self.n_targets * (self.n_targets - 1) // 2)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | Path | None = None) -> SimParams:
        """Build from a mapping (e.g. parsed JSON/YAML); unknown keys raise CalflowInputError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise CalflowInputError(
                f"unknown simulation parameter(s) {', '.join(map(repr, unknown))}",
                file=source,
                fix=f"use only these names: {', '.join(names)}",
            )
        kwargs = dict(values)
        for name in _PAIR_FIELDS:
            if name in kwargs and isinstance(kwargs[name], list):
                kwargs[name] = tuple(kwargs[name])
        params = cls(**kwargs)
        params.validate(source=source)
        return params

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every parameter."""
        out = dataclasses.asdict(self)
        for name in _PAIR_FIELDS:
            out[name] = list(getattr(self, name))
        return out

    # -- validation ----------------------------------------------------------------------

    def validate(self, *, source: str | Path | None = None) -> None:
        """Raise CalflowInputError naming the first bad parameter and how to fix it."""

        def bad(name: str, problem: str, fix: str) -> CalflowInputError:
            return CalflowInputError(
                f"simulation parameter {name}={getattr(self, name)!r} {problem}", file=source, fix=fix
            )

        hints = self.field_types()
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = hints[f.name]
            if kind is bool:
                if not isinstance(v, bool | np.bool_):
                    raise bad(f.name, "is not a boolean", f"set {f.name} to true or false")
            elif kind is int or kind == (int | None):
                if v is None and kind is not int:
                    continue
                if isinstance(v, bool) or not isinstance(v, int | np.integer):
                    raise bad(f.name, "is not an integer", f"give {f.name} as a whole number")
            elif kind is float:
                if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                    raise bad(f.name, "is not a number", f"give {f.name} as a number")
                if not math.isfinite(float(v)):
                    raise bad(f.name, "is not finite", f"give {f.name} as a finite number")
        gy_gx = self.nonrigid_grid
        if (
            not isinstance(gy_gx, tuple | list)
            or len(gy_gx) != 2
            or not all(isinstance(g, int | np.integer) and not isinstance(g, bool) for g in gy_gx)
        ):
            raise bad("nonrigid_grid", "is not two integers (gy, gx)", "give nonrigid_grid as e.g. (4, 4)")
        off = self.fov_offset
        if (
            not isinstance(off, tuple | list)
            or len(off) != 2
            or not all(isinstance(o, int | float | np.integer | np.floating) and not isinstance(o, bool)
                       and math.isfinite(float(o)) for o in off)
        ):
            raise bad("fov_offset", "is not two finite numbers (dy, dx)", "give fov_offset as e.g. (1.0, -0.5) px")

        def need(cond: bool, name: str, problem: str, fix: str) -> None:
            if not cond:
                raise bad(name, problem, fix)

        need(self.n_frames >= 1, "n_frames", "must be >= 1", "set n_frames to the movie length in frames")
        for name in ("height", "width"):
            need(getattr(self, name) >= 16, name, "must be >= 16 px", f"set {name} to at least 16")
        need(self.fps > 0, "fps", "must be > 0", "set fps to the frame rate in Hz, e.g. 30")
        need(self.n_cells >= 1, "n_cells", "must be >= 1", "set n_cells to a positive number")
        need(self.radius_min >= 1.0, "radius_min", "must be >= 1 px", "set radius_min to e.g. 4")
        need(self.radius_max >= self.radius_min, "radius_max", f"is smaller than radius_min={self.radius_min}",
             "set radius_max >= radius_min")
        need(0 <= self.ellipticity <= 0.9, "ellipticity", "must be in [0, 0.9]", "use e.g. 0.3 (0 = discs)")
        need(self.edge_softness > 0, "edge_softness", "must be > 0", "use e.g. 0.7 px")
        need(0 < self.nucleus_fraction < 1, "nucleus_fraction", "must be in (0, 1)", "use e.g. 0.45")
        need(0 <= self.nucleus_depth < 1, "nucleus_depth", "must be in [0, 1)", "use 0 for no nucleus, e.g. 0.35")
        need(0 <= self.overlap_fraction <= 0.5, "overlap_fraction", "must be in [0, 0.5]",
             "use e.g. 0.15; each overlapping cell needs its own non-overlapping neighbour")
        need(self.cell_brightness > 0, "cell_brightness", "must be > 0", "use e.g. 1.0")
        for name in ("brightness_cv", "rate_cv", "amplitude_cv", "population_coupling", "spike_rate_hz",
                     "spike_amplitude", "neuropil_level", "neuropil_coupling", "neuropil_noise",
                     "bg_level", "bg_fluct", "baseline", "read_noise", "max_shift", "rigid_std",
                     "nonrigid_amplitude", "stim_gain", "w_gain", "w_delay_s", "w_min"):
            need(getattr(self, name) >= 0, name, "must be >= 0", f"set {name} to 0 or a positive value")
        for name in ("population_tau_s", "tau_decay_s", "neuropil_tau_s", "neuropil_scale_px", "bg_tau_s",
                     "rigid_tau_s", "nonrigid_tau_s", "photons_per_unit", "gain"):
            need(getattr(self, name) > 0, name, "must be > 0", f"set {name} to a positive value")
        need(0 <= self.tau_rise_s < self.tau_decay_s, "tau_rise_s",
             f"must be in [0, tau_decay_s={self.tau_decay_s})", "use a rise time shorter than the decay, e.g. 0.05")
        need(0 <= self.tau_jitter <= 0.5, "tau_jitter", "must be in [0, 0.5]", "use e.g. 0.1 (0 = one shared g)")
        need(self.bg_rank >= 0, "bg_rank", "must be >= 0", "use e.g. 2 (0 = no background)")
        need(0 < self.bg_scale <= 1, "bg_scale", "must be in (0, 1]", "use e.g. 0.25 of the FOV size")
        need(0 <= self.offset < UINT16_MAX, "offset", "must be in [0, 65535)", "use e.g. 200 DU")
        need(0 < self.expression_scale <= 100, "expression_scale", "must be in (0, 100]", "use e.g. 1.0 (no change)")
        lim = min(self.height, self.width) / 4
        need(max(abs(float(o)) for o in off) <= lim, "fov_offset", f"must be within +-{lim:g} px (a quarter of the FOV)",
             "use a small re-placement, e.g. (1.0, -0.5) px")
        need(abs(self.fov_rotation_deg) <= 30, "fov_rotation_deg", "must be in [-30, 30] degrees",
             "use a small rotation, e.g. 0.5")
        for name in ("bleach_tau_s", "stim_artifact", "offtarget_radius_px", "offtarget_gain"):
            need(getattr(self, name) >= 0, name, "must be >= 0", f"set {name} to 0 (none) or a positive value")
        if self.motion:
            need(self.rigid_std == 0 or self.max_shift > 0, "max_shift", "is 0 while rigid_std > 0",
                 "set max_shift > 0 or rigid_std = 0")
        gy, gx = (int(g) for g in gy_gx)
        need(gy >= 2 and gx >= 2, "nonrigid_grid", "needs >= 2 control points per axis", "use e.g. (4, 4)")
        need(gy <= self.height and gx <= self.width, "nonrigid_grid", "has more control points than pixels",
             "use a coarse grid, e.g. (4, 4)")
        spacing = min((self.height - 1) / (gy - 1), (self.width - 1) / (gx - 1))
        if self.motion and self.nonrigid:
            need(self.nonrigid_amplitude <= spacing / 6, "nonrigid_amplitude",
                 f"is too large for a control spacing of {spacing:.1f} px (the deformation could fold)",
                 f"use nonrigid_amplitude <= {spacing / 6:.2f} px or a coarser nonrigid_grid")
        major = self.radius_max / math.sqrt(1 - self.ellipticity)
        margin = major + 2 * self.edge_softness + 1
        need(2 * margin + 1 < min(self.height, self.width), "radius_max",
             f"does not fit in a {self.height}x{self.width} FOV", "use smaller cells or a larger FOV")
        need(0 <= self.n_targets <= self.n_cells, "n_targets", f"must be in [0, n_cells={self.n_cells}]",
             "use fewer targets or more cells")
        max_pairs = self.n_targets * (self.n_targets - 1) // 2
        need(0 <= self.pairs_count <= max_pairs, "n_pairs",
             f"must be in [0, {max_pairs}] for n_targets={self.n_targets}",
             f"use at most n_targets*(n_targets-1)/2 = {max_pairs} pairs")
        need(self.trial_frames >= 1, "trial_frames", "must be >= 1", "use e.g. 10")
        need(self.iti_frames >= 0, "iti_frames", "must be >= 0", "use e.g. 20")
        need(self.iti_jitter_frames >= 0, "iti_jitter_frames", "must be >= 0", "use e.g. 5 (0 = fixed ITI)")
        need(self.stim_start_frame >= 0, "stim_start_frame", "must be >= 0", "use e.g. 30")
        need(0 <= self.connection_prob <= 1, "connection_prob", "must be in [0, 1]", "use e.g. 0.1")
        need(self.w_max >= self.w_min, "w_max", f"is smaller than w_min={self.w_min}", "set w_max >= w_min")
        if self.n_targets > 0:
            need(self.stim_start_frame + self.trial_frames <= self.n_frames, "n_frames",
                 f"is too short for one trial (stim_start_frame={self.stim_start_frame} + "
                 f"trial_frames={self.trial_frames})", "use more frames, an earlier stim_start_frame, or n_targets=0")
            if self.n_blocks is not None:
                n_patterns = self.n_targets + self.pairs_count
                need(self.n_blocks >= 1, "n_blocks", "must be >= 1 or None", "use None to fill the movie")
                worst = self.stim_start_frame + self.n_blocks * n_patterns * (
                    self.trial_frames + self.iti_frames + self.iti_jitter_frames)
                need(worst <= self.n_frames, "n_blocks",
                     f"needs up to {worst} frames but n_frames={self.n_frames}",
                     f"use n_frames >= {worst}, fewer blocks, or n_blocks=None (as many as fit)")


# --------------------------------------------------------------------------------------------
# per-session nuisance and study design
# --------------------------------------------------------------------------------------------

#: Distributions of :func:`draw_nuisance` at ``scale=1`` (documented in docs/simulate.md).
NUISANCE = {
    "expression_scale": "base x log-normal, mean 1, cv 0.2 * scale",
    "photons_per_unit": "base x (1 + scale * U(-0.3, 0.3))",
    "neuropil_level": "base x (1 + scale * U(-0.3, 0.3))",
    "fov_offset": "base + scale * U(-1.5, 1.5) px, each axis",
    "fov_rotation_deg": "base + scale * U(-1, 1) degrees",
    "bleach_tau_s": "bleach rate 1/tau = 1/base + scale / U(600, 3000) s",
    "stim_artifact": "base + scale * U(0, 0.05) F units",
    "offtarget_radius_px": "base + scale * U(0, 5) px",
}


def draw_nuisance(seed: int, scale: float = 1.0, *, base: SimParams | None = None) -> dict[str, Any]:
    """SimParams overrides for one session's nuisance, deterministic in ``seed``.

    ``dataclasses.replace(base, **draw_nuisance(seed, base=base))`` is a session of the same
    animal that differs from ``base`` only by per-session nuisance: GCaMP expression, detector
    photons per F unit, neuropil level, a static FOV re-placement, photobleaching, a stimulation
    light artefact and off-target excitation (distributions in :data:`NUISANCE`). Multiplicative
    quantities are relative to ``base`` (default ``SimParams()``); ``scale`` widens or narrows
    every spread (0 = the base values, i.e. no change; 1 = realistic day-to-day variation). Each
    quantity has its own random stream, so its value does not depend on the others.

    The FOV re-placement stays small (offset <= 1.5 px per axis plus a rotation <= 1 degree: at
    most 2.6 px per axis, 3.7 px in length, at the corners of a 128 px FOV, i.e. <= 1.3 px per
    axis at half resolution) so that a classifier shared by an animal's sessions, trained with
    +-2 px shift augmentation at half resolution, still sees the same cells.
    """
    seed = _check_seed("seed", seed)
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating) or not (
            math.isfinite(float(scale)) and scale >= 0):
        raise CalflowInputError(f"scale={scale!r} is not a finite number >= 0", fix="use e.g. scale=1.0 (0 = none)")
    b = base or SimParams()
    s = float(scale)

    def u(i: int, lo: float, hi: float, n: int | None = None) -> Any:
        return _rng(seed, "nuisance", i).uniform(lo, hi, n)

    sigma = s * math.sqrt(math.log1p(0.2 * 0.2))
    z = float(_rng(seed, "nuisance", 0).standard_normal())
    dy, dx = (float(v) for v in u(3, -1.5, 1.5, 2))
    rate = (1.0 / b.bleach_tau_s if b.bleach_tau_s > 0 else 0.0) + s / float(u(5, 600.0, 3000.0))
    out = {
        "expression_scale": float(b.expression_scale * math.exp(sigma * z - sigma * sigma / 2)),
        "photons_per_unit": float(b.photons_per_unit * (1 + s * u(1, -0.3, 0.3))),
        "neuropil_level": float(b.neuropil_level * (1 + s * u(2, -0.3, 0.3))),
        "fov_offset": (float(b.fov_offset[0]) + s * dy, float(b.fov_offset[1]) + s * dx),
        "fov_rotation_deg": float(b.fov_rotation_deg + s * u(4, -1.0, 1.0)),
        "bleach_tau_s": float(1.0 / rate) if rate > 0 else 0.0,
        "stim_artifact": float(b.stim_artifact + s * u(6, 0.0, 0.05)),
        "offtarget_radius_px": float(b.offtarget_radius_px + s * u(7, 0.0, 5.0)),
    }
    if s == 0:  # exactly the base values (no rounding through the formulas)
        out = {k: getattr(b, k) for k in out}
    return out


def study_params(**overrides: Any) -> SimParams:
    """SimParams of a calibration study session: every pattern presented ``trials_per_pattern`` times.

    8 targets, the 8 single-target patterns plus ``n_pairs`` (default 8) random pairs,
    ``n_blocks = trials_per_pattern`` (default 10) blocks of every pattern, motion on, and
    ``n_frames`` just long enough for every block at the worst-case inter-trial jitter (the
    bound :meth:`SimParams.validate` checks). ``overrides`` may set any SimParams field (an
    explicit ``n_frames`` is kept and validated) and ``trials_per_pattern``. The pairs are drawn
    from the anatomy seed, so an animal's sessions share them; ``patterns`` in the ground truth
    shows which pairs share a target (every pair shares both its targets with single patterns).
    """
    kw = dict(overrides)
    trials = kw.pop("trials_per_pattern", None)
    if trials is not None and kw.get("n_blocks") is not None and kw["n_blocks"] != trials:
        raise CalflowInputError(
            f"trials_per_pattern={trials!r} and n_blocks={kw['n_blocks']!r} disagree",
            fix="give one of them (each block presents every pattern once)",
        )
    if trials is None:
        trials = kw.get("n_blocks") if kw.get("n_blocks") is not None else 10
    if isinstance(trials, bool) or not isinstance(trials, int | np.integer) or trials < 1:
        raise CalflowInputError(f"trials_per_pattern={trials!r} is not an integer >= 1", fix="use e.g. 10")
    values = {"n_targets": 8, "n_pairs": 8, "motion": True, **kw, "n_blocks": int(trials)}
    names = {f.name for f in dataclasses.fields(SimParams)}
    if "n_frames" not in kw and set(values) <= names:  # unknown names: from_dict below says which
        p = dataclasses.replace(SimParams(), **{k: v for k, v in values.items() if k != "n_frames"})
        n_patterns = p.n_targets + p.pairs_count
        values["n_frames"] = int(p.stim_start_frame + p.n_blocks * n_patterns * (
            p.trial_frames + p.iti_frames + p.iti_jitter_frames))
    return SimParams.from_dict(values)


# --------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class GroundTruth:
    """Everything about a simulated session except the movie (small: O(K*T + Y*X)).

    Shapes: K cells, T frames, (Y, X) FOV, R background rank, (gy, gx) control grid,
    N targets, P patterns. Fluorescence in F units (see :class:`SimParams`).
    """

    params: SimParams
    seed: int
    # cells (world coordinates, pixels)
    centers: np.ndarray  # (K, 2) float64 (y, x)
    radii: np.ndarray  # (K,) float64, geometric mean of the semi-axes
    semi_axes: np.ndarray  # (K, 2) float64 (major, minor) in px
    angles: np.ndarray  # (K,) float64, major-axis angle in rad from the +y axis towards +x
    overlap_partner: np.ndarray  # (K,) int64, the cell it was placed to overlap, -1 none
    f0: np.ndarray  # (K,) float32 resting fluorescence, F units
    boxes: list[tuple[int, int, np.ndarray]]  # per cell (y0, x0, float32 patch), unit max
    # activity
    rate_hz: np.ndarray  # (K, T) float32 firing rate used to draw the spikes
    spikes: np.ndarray  # (K, T) float32 spike counts per frame
    calcium: np.ndarray  # (K, T) float32, F units
    g: np.ndarray  # (K, 2) float64 AR(2) coefficients (g1, g2)
    tau_rise_s: np.ndarray  # (K,)
    tau_decay_s: np.ndarray  # (K,)
    spike_amplitude: np.ndarray  # (K,) peak transient of one isolated spike, F units
    spike_weight: np.ndarray  # (K,) AR input per spike: c[t] = g1 c[t-1] + g2 c[t-2] + w s[t]
    population: np.ndarray  # (T,) float32 shared rate modulation factor (mean 1)
    # neuropil / background, maps on the padded world canvas (Y + 2 pad, X + 2 pad)
    pad: int
    neuropil_map: np.ndarray  # (Y+2p, X+2p) float32, mean 1 over the FOV
    neuropil_trace: np.ndarray  # (T,) float32, F units
    bg_maps: np.ndarray  # (R, Y+2p, X+2p) float32, mean 1 over the FOV
    bg_traces: np.ndarray  # (R, T) float32, F units
    # motion
    rigid_shifts: np.ndarray  # (T, 2) float64 (dy, dx) px
    nonrigid_grid: np.ndarray  # (T, gy, gx, 2) float64 (dy, dx) px at the control points
    control_y: np.ndarray  # (gy,) float64 control point rows, px
    control_x: np.ndarray  # (gx,) float64 control point columns, px
    # stimulation / connectivity
    W: np.ndarray  # (K, K) float64, W[source, target]
    target_cells: np.ndarray  # (N,) int64: target id j is cell target_cells[j]
    patterns: np.ndarray  # (P, 2) int64 target ids, -1 padding for single-target patterns
    trial_start: np.ndarray  # (n_trials,) int64 first stimulated frame
    trial_stop: np.ndarray  # (n_trials,) int64 one past the last stimulated frame
    trial_pattern: np.ndarray  # (n_trials,) int64 index into patterns
    trial_block: np.ndarray  # (n_trials,) int64 block number
    stim: np.ndarray  # (T, N) bool, stim[t, j] = target j stimulated in frame t
    delay_frames: int = 0
    anatomy_seed: int | None = None  # seed of cells, targets, pairs, W and maps (None = seed)
    # per-session nuisance (None = none: a ground truth saved before these existed)
    cell_scale: np.ndarray | None = None  # (T,) float32: cells render as cell_scale[t] * (f0 + calcium[t])
    bleach: np.ndarray | None = None  # (T,) float32 exp(-t / (fps * bleach_tau_s)); in cell_scale and neuropil_trace
    artifact: np.ndarray | None = None  # (T,) float32 F units added to every pixel of frame t (stim artefact)
    stim_drive: np.ndarray | None = None  # (K, N) float64 Hz of extra rate of cell k while target j is stimulated
    fov_offset: np.ndarray | None = None  # (2,) float64 static (dy, dx) px of the session's FOV
    fov_rotation_deg: float = 0.0  # static rotation of the content about the FOV centre, degrees

    # -- derived -------------------------------------------------------------------------

    @property
    def n_cells(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.params.n_frames)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Movie shape (T, Y, X)."""
        return (self.params.n_frames, self.params.height, self.params.width)

    @property
    def fps(self) -> float:
        return float(self.params.fps)

    @property
    def w_gain(self) -> float:
        return float(self.params.w_gain)

    @property
    def footprints(self) -> np.ndarray:
        """Dense footprints (K, Y, X) float32, unit max (allocates K*Y*X*4 bytes)."""
        out = np.zeros((self.n_cells, self.params.height, self.params.width), np.float32)
        for k, (y0, x0, box) in enumerate(self.boxes):
            out[k, y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]] = box
        return out

    def footprint(self, k: int) -> np.ndarray:
        """Dense footprint of cell k, (Y, X) float32, unit max."""
        out = np.zeros((self.params.height, self.params.width), np.float32)
        y0, x0, box = self.boxes[k]
        out[y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]] = box
        return out

    @property
    def neuropil_spatial(self) -> np.ndarray:
        """Neuropil map on the FOV, (Y, X) float32 (mean 1)."""
        p = self.pad
        return self.neuropil_map[p : p + self.params.height, p : p + self.params.width]

    @property
    def background_spatial(self) -> np.ndarray:
        """Background maps on the FOV, (R, Y, X) float32 (mean 1 each)."""
        p = self.pad
        return self.bg_maps[:, p : p + self.params.height, p : p + self.params.width]

    def masks(self) -> np.ndarray:
        """Label image (Y, X) uint16: k+1 where cell k's footprint >= 0.5 (holes filled).

        Where several cells qualify, the one contributing most resting light
        (``f0[k] * footprint_k``) wins; 0 = no cell.
        """
        Y, X = self.params.height, self.params.width
        labels = np.zeros((Y, X), np.uint16)
        best = np.zeros((Y, X), np.float32)
        for k, (y0, x0, box) in enumerate(self.boxes):
            region = ndimage.binary_fill_holes(box >= 0.5)
            value = np.where(region, np.maximum(box, 1e-6) * self.f0[k], 0).astype(np.float32)
            sl = (slice(y0, y0 + box.shape[0]), slice(x0, x0 + box.shape[1]))
            win = value > best[sl]
            labels[sl][win] = k + 1
            best[sl][win] = value[win]
        return labels

    def stim_log(self) -> list[str]:
        """Per frame (T,) the ';'-joined stimulated target ids, '' for none."""
        out = []
        for row in self.stim:
            ids = np.flatnonzero(row)
            out.append(";".join(str(int(i)) for i in ids))
        return out

    @cached_property
    def _spline_y(self) -> CubicSpline:
        return CubicSpline(self.control_y, np.eye(len(self.control_y)), bc_type="natural")

    @cached_property
    def _spline_x(self) -> CubicSpline:
        return CubicSpline(self.control_x, np.eye(len(self.control_x)), bc_type="natural")

    @cached_property
    def _basis_y(self) -> np.ndarray:
        return np.ascontiguousarray(self._spline_y(np.arange(self.params.height, dtype=np.float64)))

    @cached_property
    def _basis_x(self) -> np.ndarray:
        return np.ascontiguousarray(self._spline_x(np.arange(self.params.width, dtype=np.float64)))

    @property
    def has_static(self) -> bool:
        """True if the session's FOV is re-placed (``fov_offset`` / ``fov_rotation_deg``)."""
        return bool((self.fov_offset is not None and np.any(self.fov_offset)) or self.fov_rotation_deg)

    @property
    def has_motion(self) -> bool:
        """True if rendering warps the world: motion or a static FOV re-placement."""
        return bool(np.any(self.rigid_shifts) or np.any(self.nonrigid_grid) or self.has_static)

    def fov_transform(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(R, c, o)`` of the static FOV placement: world point q appears at ``c + R (q - c) + o``.

        R (2, 2) rotates (y, x) by ``fov_rotation_deg`` from +y towards +x, c the FOV centre
        ``((Y-1)/2, (X-1)/2)``, o = ``fov_offset``. Within-session motion comes on top of this.
        """
        a = math.radians(self.fov_rotation_deg)
        R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = np.array([(self.params.height - 1) / 2, (self.params.width - 1) / 2])
        o = np.zeros(2) if self.fov_offset is None else np.asarray(self.fov_offset, np.float64)
        return R, c, o

    def static_displacement(self, points_yx: np.ndarray) -> np.ndarray:
        """Generative displacement of the static FOV placement at frame points (n, 2) -> (n, 2).

        ``S(p) = (p - c) - R^T (p - c - o)``, so that without motion ``frame(p) = world(p - S(p))``.
        It is added to the within-session field: ``frame_t(p) = world(p - D_t(p) - S(p))``.
        """
        pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
        if not self.has_static:
            return np.zeros_like(pts)
        R, c, o = self.fov_transform()
        return (pts - c) - (pts - c - o) @ R  # row vectors: v @ R = (R^T v^T)^T

    @property
    def fov_centers(self) -> np.ndarray:
        """(K, 2) where each cell centre appears in this session's FOV before within-session motion."""
        R, c, o = self.fov_transform()
        return c + (self.centers - c) @ R.T + o

    @cached_property
    def _static_field(self) -> np.ndarray | None:
        """Static generative field on the frame grid (2, Y, X) float64, None if there is none."""
        if not self.has_static:
            return None
        Y, X = self.params.height, self.params.width
        yy, xx = np.mgrid[0:Y, 0:X].astype(np.float64)
        return np.moveaxis(self.static_displacement(np.column_stack([yy.ravel(), xx.ravel()])).reshape(Y, X, 2), -1, 0)


# --------------------------------------------------------------------------------------------
# simulation (everything but the movie)
# --------------------------------------------------------------------------------------------


def _smooth_process(rng: np.random.Generator, n: int, T: int, tau_frames: float) -> np.ndarray:
    """(n, T) smooth stationary gaussian processes, zero mean, unit variance.

    White noise through two cascaded AR(1) filters with time constant ``tau_frames``;
    a burn-in of 5 tau makes the start stationary.
    """
    if n == 0:
        return np.zeros((0, T))
    a = math.exp(-1.0 / max(tau_frames, 1e-9))
    burn = int(min(5 * tau_frames, 20000)) + 2
    x = rng.standard_normal((n, T + burn))
    y = signal.lfilter([1.0], [1.0, -a], signal.lfilter([1.0], [1.0, -a], x, axis=1), axis=1)
    var = (1 + a * a) / (1 - a * a) ** 3
    return y[:, burn:] / math.sqrt(var)


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    """n log-normal draws with the given mean and coefficient of variation."""
    s2 = math.log1p(cv * cv)
    return mean * np.exp(rng.normal(-s2 / 2, math.sqrt(s2), n))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float, fov: tuple[slice, slice],
                  contrast: float = 0.5) -> np.ndarray:
    """Positive smooth random map (log-normal gaussian field), mean 1 over ``fov``."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    z /= z.std() + 1e-12
    m = np.exp(contrast * z)
    return (m / m[fov].mean()).astype(np.float32)


def _place_cells(p: SimParams, rng: np.random.Generator):
    """Cell centres (y, x), semi-axes, angles and overlap partners in world coordinates."""
    K, Y, X = p.n_cells, p.height, p.width
    radii = rng.uniform(p.radius_min, p.radius_max, K)
    q = rng.uniform(1 - p.ellipticity, 1.0, K)
    major, minor = radii / np.sqrt(q), radii * np.sqrt(q)
    angles = rng.uniform(0, np.pi, K)
    margin = major + 2 * p.edge_softness + 1
    n_over = min(int(round(p.overlap_fraction * K)), K // 2)
    n_free = K - n_over
    centers = np.full((K, 2), np.nan)
    partner = np.full(K, -1, np.int64)

    cos, sin = np.cos(angles), np.sin(angles)

    def extent(e: np.ndarray, i: np.ndarray | int) -> np.ndarray:
        """Distance from the centre of ellipse(s) ``i`` to their half-max contour along unit ``e``."""
        eu = e[..., 0] * cos[i] + e[..., 1] * sin[i]
        ev = -e[..., 0] * sin[i] + e[..., 1] * cos[i]
        return 1.0 / np.sqrt((eu / major[i]) ** 2 + (ev / minor[i]) ** 2)

    def clear_of(c: np.ndarray, k: int, placed: np.ndarray, skip: int = -1) -> np.ndarray:
        """(n,) True where candidates ``c`` (n, 2) keep a 1 px gap to every placed cell's contour."""
        idx = placed[placed != skip]
        if idx.size == 0:
            return np.ones(len(c), bool)
        diff = c[:, None, :] - centers[idx][None]
        d = np.linalg.norm(diff, axis=-1)
        e = diff / np.maximum(d, 1e-9)[..., None]
        return np.all(d >= extent(e, k) + extent(e, idx[None, :]) + 1.0, axis=1)

    def too_dense(what: str) -> CalflowInputError:
        r = (p.radius_min + p.radius_max) / 2 + 0.5
        fit = int(0.5 * (Y - 2 * margin.mean()) * (X - 2 * margin.mean()) / (np.pi * r * r) * 1.3)
        return CalflowInputError(
            f"could not place {what} cells of radius {p.radius_min}-{p.radius_max} px in a {Y}x{X} FOV "
            f"(about {max(fit, 1)} non-overlapping cells of this size fit)",
            fix="reduce n_cells or overlap_fraction, use smaller radii, or enlarge height/width",
        )

    for k in range(n_free):
        placed = np.arange(k)
        for _ in range(40):
            c = np.column_stack([rng.uniform(margin[k], Y - 1 - margin[k], 256),
                                 rng.uniform(margin[k], X - 1 - margin[k], 256)])
            ok = np.flatnonzero(clear_of(c, k, placed))
            if ok.size:
                centers[k] = c[ok[0]]
                break
        else:
            raise too_dense(f"{n_free} non-overlapping")
    parents = rng.permutation(n_free)
    pi = 0
    for k in range(n_free, K):
        placed = np.arange(k)
        done = False
        while not done and pi < n_free:
            par = int(parents[pi])
            pi += 1
            for _ in range(8):
                ang = rng.uniform(0, 2 * np.pi, 64)
                dist = rng.uniform(0.45, 0.8, 64) * (radii[k] + radii[par])
                c = centers[par] + np.column_stack([np.sin(ang), np.cos(ang)]) * dist[:, None]
                inside = ((c[:, 0] >= margin[k]) & (c[:, 0] <= Y - 1 - margin[k])
                          & (c[:, 1] >= margin[k]) & (c[:, 1] <= X - 1 - margin[k]))
                # clear of every placed cell except the parent, and of the parent's partner
                ok = np.flatnonzero(inside & clear_of(c, k, placed, skip=par))
                if ok.size:
                    centers[k] = c[ok[0]]
                    partner[k], partner[par] = par, k
                    done = True
                    break
        if not done:
            raise too_dense(f"{n_over} overlapping")
    perm = rng.permutation(K)
    inv = np.argsort(perm)
    partner = partner[perm]
    partner = np.where(partner >= 0, inv[np.maximum(partner, 0)], -1)
    return centers[perm], radii[perm], np.column_stack([major, minor])[perm], angles[perm], partner


def _footprint_box(p: SimParams, center: np.ndarray, radius: float, axes: np.ndarray, angle: float):
    """(y0, x0, patch) of one soma: soft ellipse times a darker nucleus, unit max, float32."""
    Y, X = p.height, p.width
    h = int(math.ceil(axes[0] + 5 * p.edge_softness + 2))
    cy, cx = center
    y0, y1 = max(0, int(cy) - h), min(Y, int(cy) + h + 1)
    x0, x1 = max(0, int(cx) - h), min(X, int(cx) + h + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dy * math.cos(angle) + dx * math.sin(angle)
    v = -dy * math.sin(angle) + dx * math.cos(angle)
    rho = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)
    soma = expit((1.0 - rho) * radius / p.edge_softness)
    nucleus = 1.0 - p.nucleus_depth * np.exp(-0.5 * (rho / p.nucleus_fraction) ** 2)
    f = soma * nucleus
    f /= f.max()
    f[f < 1e-3] = 0.0
    return y0, x0, f.astype(np.float32)


def _ar2(p: SimParams, rng: np.random.Generator, K: int):
    """Per-cell time constants, AR(2) coefficients (K, 2) and the peak of the unit impulse response."""
    dt = 1.0 / p.fps
    jit = np.exp(p.tau_jitter * rng.standard_normal((K, 2)))
    tau_d = p.tau_decay_s * jit[:, 0]
    tau_r = np.minimum(p.tau_rise_s * jit[:, 1], 0.9 * tau_d)
    d = np.exp(-dt / tau_d)
    r = np.where(tau_r > 0, np.exp(-dt / np.maximum(tau_r, 1e-12)), 0.0)
    g = np.column_stack([d + r, -d * r])
    # impulse response h[n] = (d^(n+1) - r^(n+1)) / (d - r) peaks within ~10 rise times
    n = np.arange(int(10 * tau_r.max() * p.fps) + 10)[None, :]
    h = (d[:, None] ** (n + 1) - r[:, None] ** (n + 1)) / (d - r)[:, None]
    return tau_r, tau_d, g, h.max(axis=1)


def _poisson_inverse(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson counts by inverse CDF of uniforms ``u``: monotone in ``lam`` for a fixed ``u``.

    This couples conditions: raising a rate (e.g. w_gain) can only add spikes, never move them.
    """
    k = np.zeros(lam.shape, np.float32)
    pmf = np.exp(-lam)
    cdf = pmf.copy()
    kmax = int(np.ceil(lam.max() + 12 * math.sqrt(lam.max()) + 12)) if lam.size else 0
    for i in range(1, kmax + 1):
        more = u > cdf
        if not more.any():
            break
        k += more
        pmf = pmf * lam / i
        cdf = cdf + pmf
    return k


def evoked_calcium(g: np.ndarray, spike_weight: np.ndarray, fps: float, trial_frames: int, delay_frames: int,
                   context: int = 0) -> np.ndarray:
    """Expected extra calcium of each cell during a trial per 1 Hz of extra firing rate, (2, K) F units.

    Row 0: the rate rises for the trial's ``trial_frames`` frames (a stimulated target); row 1: the
    same step delayed by ``delay_frames`` (a driven cell). The value is the mean, over the trial's
    frames t, of the calcium averaged over the window ``t - context .. t + context`` (what an input
    of ``2 * context + 1`` frames sees), through each cell's AR(2) kernel ``g`` (K, 2) and
    ``spike_weight`` (K,). A target j's expected response is then ``stim_gain * (row 0 at j +
    w_gain * W[j] * row 1)``, the per-cell weights of its functional footprint.
    """
    g = np.asarray(g, np.float64)
    n = delay_frames + trial_frames + 2 * context + 1
    out = np.empty((2, len(g)))
    windows = np.lib.stride_tricks.sliding_window_view(np.arange(n), 2 * context + 1)[:trial_frames]
    for row, lag in enumerate((0, delay_frames)):
        drive = np.zeros(n)
        drive[context + lag: context + lag + trial_frames] = 1.0 / fps  # expected extra spikes per frame
        for k in range(len(g)):
            ca = signal.lfilter([float(spike_weight[k])], [1.0, -g[k, 0], -g[k, 1]], drive)
            out[row, k] = ca[windows].mean()
    return out


def _stim_schedule(p: SimParams, rng: np.random.Generator, rng_order: np.random.Generator):
    """Patterns (P, 2), trial arrays and the per-frame (T, N) stimulation matrix.

    The pair patterns come from ``rng`` (the experimental design, shared by an animal's
    sessions); the trial order and inter-trial intervals from ``rng_order`` (per session).
    """
    T, N = p.n_frames, p.n_targets
    stim = np.zeros((T, N), bool)
    singles = [(j, -1) for j in range(N)]
    combos = [(a, b) for a in range(N) for b in range(a + 1, N)]
    n_pairs = p.pairs_count
    chosen = rng.choice(len(combos), size=n_pairs, replace=False) if n_pairs else np.array([], int)
    pairs = sorted(combos[i] for i in chosen)
    patterns = np.array(singles + pairs, np.int64).reshape(-1, 2)
    starts, pats, blocks = [], [], []
    if N > 0:
        t = p.stim_start_frame
        block = 0
        while p.n_blocks is None or block < p.n_blocks:
            order = rng_order.permutation(len(patterns))
            gaps = p.iti_frames + rng_order.integers(0, p.iti_jitter_frames + 1, len(patterns))
            for i, pat in enumerate(order):
                if t + p.trial_frames > T:
                    break
                starts.append(t)
                pats.append(int(pat))
                blocks.append(block)
                t += p.trial_frames + int(gaps[i])
            else:
                block += 1
                continue
            break
    trial_start = np.array(starts, np.int64)
    trial_stop = trial_start + p.trial_frames
    trial_pattern = np.array(pats, np.int64)
    for s, e, pat in zip(trial_start, trial_stop, trial_pattern, strict=True):
        for j in patterns[pat]:
            if j >= 0:
                stim[s:e, j] = True
    return patterns, trial_start, trial_stop, trial_pattern, np.array(blocks, np.int64), stim


def _connectivity(p: SimParams, rng: np.random.Generator, target_cells: np.ndarray) -> np.ndarray:
    """Sparse non-negative W (K, K), W[source, target]; every target has >= 1 outgoing link."""
    K = p.n_cells
    weights = rng.uniform(p.w_min, p.w_max, (K, K))
    mask = rng.random((K, K)) < p.connection_prob
    np.fill_diagonal(mask, False)
    W = np.where(mask, weights, 0.0)
    if K > 1:
        for i in target_cells:
            if not W[i].any():
                j = int(rng.integers(0, K - 1))
                j += j >= i
                W[i, j] = weights[i, j]
    return W


def _check_seed(name: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise CalflowInputError(f"{name}={seed!r} is not a non-negative integer", fix=f"pass e.g. {name}=0")
    return int(seed)


def simulate(params: SimParams | None = None, seed: int = 0, *, anatomy_seed: int | None = None) -> GroundTruth:
    """Draw a session's ground truth (no movie). Deterministic in (params, seed, anatomy_seed).

    ``anatomy_seed`` (default: ``seed``) draws what belongs to the animal/FOV rather than the
    recording: cells (positions, shapes, brightness, kinetics, spike amplitudes, spontaneous
    rates), targets and the stimulated pairs, W, and the neuropil/background maps. Sessions of one animal in two
    conditions share ``anatomy_seed`` and differ in ``seed`` (activity, motion, trial order,
    noise) and ``w_gain``.
    """
    p = params or SimParams()
    p.validate()
    seed = _check_seed("seed", seed)
    aseed = seed if anatomy_seed is None else _check_seed("anatomy_seed", anatomy_seed)
    K, T, Y, X = p.n_cells, p.n_frames, p.height, p.width
    dt = 1.0 / p.fps

    # cells
    centers, radii, axes, angles, partner = _place_cells(p, _rng(aseed, "layout"))
    boxes = [_footprint_box(p, centers[k], radii[k], axes[k], angles[k]) for k in range(K)]
    f0 = _lognormal(_rng(aseed, "brightness"), p.cell_brightness, p.brightness_cv, K).astype(np.float32)

    # targets, stimulation schedule, connectivity
    rng_stim = _rng(aseed, "stim")
    isolated = np.flatnonzero(partner < 0)
    pool = np.concatenate([rng_stim.permutation(isolated), rng_stim.permutation(np.flatnonzero(partner >= 0))])
    target_cells = np.sort(pool[: p.n_targets]).astype(np.int64)
    patterns, t_start, t_stop, t_pat, t_block, stim = _stim_schedule(p, rng_stim, _rng(seed, "stim", 1))
    W = _connectivity(p, _rng(aseed, "connectivity"), target_cells)

    # firing rates: spontaneous (log-normal across cells, shared slow modulation) + stimulation
    base = _lognormal(_rng(aseed, "rates"), p.spike_rate_hz, p.rate_cv, K)
    c = p.population_coupling
    pop = np.exp(c * _smooth_process(_rng(seed, "population"), 1, T, p.population_tau_s * p.fps)[0] - c * c / 2)
    delay = int(round(p.w_delay_s * p.fps))
    drive = stim.T.astype(np.float64)  # (N, T) 1 while target j is stimulated
    delayed = np.zeros_like(drive)
    if delay < T:
        delayed[:, delay:] = drive[:, : T - delay]
    w_out = p.w_gain * p.stim_gain * W[target_cells].T  # (K, N) rate gain per stimulated target
    stim_drive, offtarget = _stim_drive(p, centers, target_cells)  # (K, N) Hz; the non-target part
    rate = np.empty((K, T), np.float32)
    spikes = np.empty((K, T), np.float32)
    rng_spikes = _rng(seed, "spikes")
    for a in range(0, T, _TIME_CHUNK):  # fixed chunks bound the float64 temporaries
        b = min(T, a + _TIME_CHUNK)
        r_ab = base[:, None] * pop[None, a:b]
        r_ab[target_cells] += p.stim_gain * drive[:, a:b]
        if offtarget is not None:
            r_ab += offtarget @ drive[:, a:b]
        r_ab += w_out @ delayed[:, a:b]
        rate[:, a:b] = r_ab
        spikes[:, a:b] = _poisson_inverse(rng_spikes.random((K, b - a)), r_ab * dt)

    # calcium: AR(2) per cell, one isolated spike peaks at spike_amplitude[k]
    tau_r, tau_d, g, peaks = _ar2(p, _rng(aseed, "kinetics"), K)
    amp = _lognormal(_rng(aseed, "kinetics", 1), p.spike_amplitude, p.amplitude_cv, K)
    weight = amp / peaks
    calcium = np.empty((K, T), np.float32)
    for k in range(K):
        calcium[k] = signal.lfilter([weight[k]], [1.0, -g[k, 0], -g[k, 1]], spikes[k].astype(np.float64))

    # motion
    gy, gx = p.nonrigid_grid
    control_y = np.linspace(0.0, Y - 1.0, gy)
    control_x = np.linspace(0.0, X - 1.0, gx)
    rigid = np.zeros((T, 2))
    grid = np.zeros((T, gy, gx, 2))
    if p.motion:
        # Zero temporal mean: the world frame is the average position, which is where a
        # mean-image template sits, so estimated shifts and the truth share their origin.
        if p.rigid_std > 0:
            walk = p.rigid_std * _smooth_process(_rng(seed, "rigid"), 2, T, p.rigid_tau_s * p.fps).T
            rigid = p.max_shift * np.tanh((walk - walk.mean(axis=0)) / p.max_shift)
            rigid -= rigid.mean(axis=0)
            peak = np.abs(rigid).max()
            if peak > p.max_shift:
                rigid *= p.max_shift / peak
        if p.nonrigid and p.nonrigid_amplitude > 0:
            proc = _smooth_process(_rng(seed, "nonrigid"), gy * gx * 2, T, p.nonrigid_tau_s * p.fps)
            grid = p.nonrigid_amplitude * proc.T.reshape(T, gy, gx, 2)
            grid -= grid.mean(axis=0, keepdims=True)  # each control point: zero mean over time
            grid -= grid.mean(axis=(1, 2), keepdims=True)  # each frame: pure deformation, rigid is separate
    # world canvas padding: bounds |D| <= |rigid| + Lebesgue(y) * Lebesgue(x) * max|grid|
    leb = 1.0
    for knots, n in ((control_y, Y), (control_x, X)):
        sp = CubicSpline(knots, np.eye(len(knots)), bc_type="natural")
        leb *= float(np.abs(sp(np.linspace(-4, n + 3, 4 * n))).sum(axis=1).max())
    # plus the static FOV placement (affine, so its largest component is at a corner of the FOV)
    static = _Static(p)
    corners = np.array([[0.0, 0.0], [0.0, X - 1.0], [Y - 1.0, 0.0], [Y - 1.0, X - 1.0]])
    static_max = float(np.abs(static.static_displacement(corners)).max())
    pad = int(math.ceil(np.abs(rigid).max(initial=0) + leb * np.abs(grid).max(initial=0) + static_max)) + 3

    # neuropil and background on the padded world canvas. The random maps are drawn on a canvas
    # whose size depends on (Y, X) only, so switching motion on/off leaves them unchanged.
    fpad = max(pad, 16 + int(math.ceil(0.05 * max(Y, X))))
    ffov = (slice(fpad, fpad + Y), slice(fpad, fpad + X))
    crop = (slice(fpad - pad, fpad + Y + pad), slice(fpad - pad, fpad + X + pad))
    Yp, Xp = Y + 2 * pad, X + 2 * pad
    fov = (slice(pad, pad + Y), slice(pad, pad + X))
    fshape = (Y + 2 * fpad, X + 2 * fpad)
    neuropil_map = _smooth_field(_rng(aseed, "neuropil"), fshape, p.neuropil_scale_px, ffov, contrast=0.4)[crop].copy()
    # population calcium: the shared rate modulation (mean 1) through the mean calcium kernel
    # (unit DC gain, started in steady state), i.e. the activity of the unobserved neurites
    g1, g2 = g.mean(axis=0)
    b_ca, a_ca = [1.0 - g1 - g2], [1.0, -g1, -g2]
    pop_ca, _ = signal.lfilter(b_ca, a_ca, pop, zi=signal.lfilter_zi(b_ca, a_ca) * pop[0])
    s = p.neuropil_noise
    fluct = np.exp(s * _smooth_process(_rng(seed, "neuropil", 1), 1, T, p.neuropil_tau_s * p.fps)[0] - s * s / 2)
    neuropil_trace = p.neuropil_level * fluct * np.maximum(0.0, 1.0 + p.neuropil_coupling * (pop_ca - 1.0))
    # photobleaching: cells and neuropil (GCaMP in the neurites) decay; background/baseline do not
    bleach = np.ones(T)
    if p.bleach_tau_s > 0:
        bleach = np.exp(-np.arange(T) / (p.fps * p.bleach_tau_s))
        neuropil_trace = neuropil_trace * bleach
    neuropil_trace = neuropil_trace.astype(np.float32)
    cell_scale = (p.expression_scale * bleach).astype(np.float32)
    artifact = np.where(stim.any(axis=1), p.stim_artifact, 0.0).astype(np.float32)
    R = p.bg_rank
    bg_maps = np.empty((R, Yp, Xp), np.float32)
    sigma = p.bg_scale * min(Y, X)
    for r in range(R):
        if r == 0:  # vignetting: brightest in the middle of the FOV
            yy, xx = np.mgrid[-pad : Y + pad, -pad : X + pad].astype(np.float64)
            vig = np.exp(-(((yy - (Y - 1) / 2) / (0.8 * Y)) ** 2 + ((xx - (X - 1) / 2) / (0.8 * X)) ** 2))
            bg_maps[0] = vig / vig[fov].mean()
        else:
            bg_maps[r] = _smooth_field(_rng(aseed, "background", r), fshape, sigma, ffov, contrast=0.5)[crop]
    s = p.bg_fluct
    proc = _smooth_process(_rng(seed, "background", 1000), R, T, p.bg_tau_s * p.fps)
    bg_traces = (p.bg_level * np.exp(s * proc - s * s / 2)).astype(np.float32)

    return GroundTruth(
        params=p, seed=seed, anatomy_seed=aseed, centers=centers, radii=radii, semi_axes=axes, angles=angles,
        overlap_partner=partner, f0=f0, boxes=boxes, rate_hz=rate, spikes=spikes,
        calcium=calcium, g=g, tau_rise_s=tau_r, tau_decay_s=tau_d, spike_amplitude=amp, spike_weight=weight,
        population=pop.astype(np.float32), pad=pad, neuropil_map=neuropil_map, neuropil_trace=neuropil_trace,
        bg_maps=bg_maps, bg_traces=bg_traces, rigid_shifts=rigid, nonrigid_grid=grid, control_y=control_y,
        control_x=control_x, W=W, target_cells=target_cells, patterns=patterns, trial_start=t_start,
        trial_stop=t_stop, trial_pattern=t_pat, trial_block=t_block, stim=stim, delay_frames=delay,
        cell_scale=cell_scale, bleach=bleach.astype(np.float32), artifact=artifact, stim_drive=stim_drive,
        fov_offset=np.array(p.fov_offset, np.float64), fov_rotation_deg=float(p.fov_rotation_deg),
    )


class _Static:
    """The static FOV placement of a SimParams (for the padding, before a GroundTruth exists)."""

    def __init__(self, p: SimParams):
        self.params = p
        self.fov_offset = np.array(p.fov_offset, np.float64)
        self.fov_rotation_deg = float(p.fov_rotation_deg)

    has_static = GroundTruth.has_static
    fov_transform = GroundTruth.fov_transform
    static_displacement = GroundTruth.static_displacement


def _stim_drive(p: SimParams, centers: np.ndarray, target_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Effective stimulation drive (K, N) in Hz and its off-target part (None without off-target).

    ``drive[target_cells[j], j] = stim_gain``; with ``offtarget_radius_px = r > 0`` every non-target
    cell k also gets ``offtarget_gain * stim_gain * exp(-d^2 / (2 r^2))`` with d the distance of
    its centre to target j's centre, for d <= 3r (0 beyond). Targets get no off-target drive.
    """
    K, N = len(centers), len(target_cells)
    drive = np.zeros((K, N))
    drive[target_cells, np.arange(N)] = p.stim_gain
    if p.offtarget_radius_px <= 0 or N == 0:
        return drive, None
    r = float(p.offtarget_radius_px)
    d = np.linalg.norm(centers[:, None, :] - centers[target_cells][None, :, :], axis=-1)  # (K, N)
    off = np.where(d <= 3 * r, p.offtarget_gain * p.stim_gain * np.exp(-(d * d) / (2 * r * r)), 0.0)
    off[target_cells] = 0.0
    return drive + off, off


# --------------------------------------------------------------------------------------------
# motion fields
# --------------------------------------------------------------------------------------------


def _frame_field(truth: GroundTruth, t: int) -> np.ndarray:
    """Generative field on the frame pixel grid, (2, Y, X) float64: frame_t(p) = world(p - D(p)).

    Tensor-product natural cubic spline through the control displacements, plus the rigid
    shift, plus the static FOV placement (if any). Elementwise sums in a fixed order, so the
    result does not depend on threads/blocks.
    """
    by, bx = truth._basis_y, truth._basis_x  # (Y, gy), (X, gx)
    static = truth._static_field
    out = np.empty((2, by.shape[0], bx.shape[0]))
    for c in range(2):
        rows = by @ truth.nonrigid_grid[t, :, :, c]  # (Y, gx)
        acc = np.full((by.shape[0], bx.shape[0]), truth.rigid_shifts[t, c])
        if static is not None:
            acc += static[c]
        for j in range(bx.shape[1]):
            acc += rows[:, j : j + 1] * bx[None, :, j]
        out[c] = acc
    return out


def _field_at(truth: GroundTruth, t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Generative (frame-coordinate) displacement of frames ``t`` (n_t,) at their own points
    (n_t, n, 2) -> (n_t, n, 2), in px (vectorised over frames: the report evaluates every frame)."""
    wy = truth._spline_y(pts[..., 0])  # (n_t, n, gy)
    wx = truth._spline_x(pts[..., 1])  # (n_t, n, gx)
    nr = np.einsum("tni,tijc,tnj->tnc", wy, truth.nonrigid_grid[t], wx)
    if truth.has_static:
        static = truth.static_displacement(pts.reshape(-1, 2)).reshape(pts.shape)
        return truth.rigid_shifts[t][:, None, :] + static + nr
    return truth.rigid_shifts[t][:, None, :] + nr


def _as_frames(truth: GroundTruth, frames: int | Sequence[int] | np.ndarray | slice) -> np.ndarray:
    if isinstance(frames, slice):
        return np.arange(truth.n_frames)[frames]
    idx = np.atleast_1d(np.asarray(frames, dtype=np.int64))
    if idx.size and (idx.min() < 0 or idx.max() >= truth.n_frames):
        raise CalflowInputError(f"frame index out of range 0..{truth.n_frames - 1}", fix="pass valid frames")
    return idx


def true_displacement(
    truth: GroundTruth,
    frames: int | Sequence[int] | np.ndarray | slice,
    points_yx: np.ndarray | Sequence[Sequence[float]],
    *,
    coords: str = "world",
    static: bool = True,
) -> np.ndarray:
    """Total (rigid + non-rigid) displacement (n_frames, n_points, 2) as (dy, dx) in px.

    ``coords="world"`` (default): ``points_yx`` are world/template positions q and the result D
    says where they appear: at ``q + D`` in frame t (exact fixed-point inverse of the
    generative field; this is what a motion-corrector estimates in template coordinates).
    ``coords="frame"``: ``points_yx`` are frame pixel positions p and D is the generative
    field: ``frame_t(p) = world(p - D)``. Both agree to O(|grad D| * |D|) (~0.01 px by default).

    ``static=True`` includes the session's static FOV placement (``fov_offset``,
    ``fov_rotation_deg``): the displacement relative to the reference FOV. ``static=False``
    leaves it out: the within-session motion only, what a corrector registering the session to
    its own mean image estimates (the same as without a re-placement).
    """
    if not static and truth.has_static:
        truth = dataclasses.replace(truth, fov_offset=None, fov_rotation_deg=0.0)
    pts = np.asarray(points_yx, dtype=np.float64).reshape(-1, 2)
    idx = _as_frames(truth, frames)
    if coords not in ("world", "frame"):
        raise CalflowInputError(f"coords={coords!r} is not 'world' or 'frame'", fix="use coords='world'")
    out = np.empty((idx.size, pts.shape[0], 2))
    block = max(1, (1 << 20) // max(1, pts.shape[0]))  # frames per block: bounded memory for many points
    for a in range(0, idx.size, block):
        t = idx[a : a + block]
        d = _field_at(truth, t, np.broadcast_to(pts, (t.size, *pts.shape)))
        if coords == "world":  # fixed point of q + D = p, frame by frame (a frame stops when it converged)
            active = np.arange(t.size)
            for _ in range(50):
                d_new = _field_at(truth, t[active], pts[None] + d[active])
                done = np.abs(d_new - d[active]).max(axis=(1, 2), initial=0) < 1e-10
                d[active] = d_new
                active = active[~done]
                if not active.size:
                    break
        out[a : a + block] = d
    return out


def dense_displacement(truth: GroundTruth, t: int, *, coords: str = "world", static: bool = True) -> np.ndarray:
    """Displacement field (Y, X, 2) of frame t at every pixel, (dy, dx) in px.

    ``coords="world"``: at world pixel q, the content of q appears at ``q + D[q]`` in frame t, so
    ``corrected = map_coordinates(frame_t, grid + D)`` undoes the motion. ``coords="frame"``: the
    generative field, ``frame_t(p) = world(p - D[p])``. ``static``: see :func:`true_displacement`.
    """
    if not static and truth.has_static:
        truth = dataclasses.replace(truth, fov_offset=None, fov_rotation_deg=0.0)
    Y, X = truth.params.height, truth.params.width
    if coords == "frame":
        return np.moveaxis(_frame_field(truth, int(_as_frames(truth, t)[0])), 0, -1)
    yy, xx = np.mgrid[0:Y, 0:X]
    pts = np.column_stack([yy.ravel(), xx.ravel()]).astype(np.float64)
    return true_displacement(truth, int(t), pts, coords=coords)[0].reshape(Y, X, 2)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _world_block(truth: GroundTruth, a: int, b: int) -> np.ndarray:
    """Noiseless un-moved fluorescence (n, Y+2p, X+2p) float32 for frames a..b-1, F units.

    Per-element sums in a fixed order (baseline, neuropil, background, cells), so a frame's
    values do not depend on the block it is computed in.
    """
    p, pad = truth.params, truth.pad
    world = np.full((b - a, p.height + 2 * pad, p.width + 2 * pad), p.baseline, np.float32)
    for i, t in enumerate(range(a, b)):  # frame by frame: temporaries of one frame only
        world[i] += truth.neuropil_trace[t] * truth.neuropil_map
        for r in range(truth.bg_maps.shape[0]):
            world[i] += truth.bg_traces[r, t] * truth.bg_maps[r]
    amp = truth.f0[:, None] + truth.calcium[:, a:b]  # (K, n) float32
    if truth.cell_scale is not None and np.any(truth.cell_scale[a:b] != 1):
        amp *= truth.cell_scale[None, a:b]  # expression level and bleaching
    for k, (y0, x0, box) in enumerate(truth.boxes):
        sl = world[:, pad + y0 : pad + y0 + box.shape[0], pad + x0 : pad + x0 + box.shape[1]]
        sl += amp[k][:, None, None] * box[None]
    return world


def _finish_frame(truth: GroundTruth, t: int, world_t: np.ndarray, noise: bool, motion: bool,
                  grid: np.ndarray | None) -> np.ndarray:
    """Warp one world frame, convert to photons/DU and add Poisson-Gaussian noise."""
    p, pad = truth.params, truth.pad
    Y, X = p.height, p.width
    if motion and grid is not None:
        coords = grid - _frame_field(truth, t)
        coords += pad
        F = ndimage.map_coordinates(world_t, coords, order=1, mode="nearest", output=np.float32)
    else:
        F = world_t[pad : pad + Y, pad : pad + X]
    if truth.artifact is not None and truth.artifact[t] != 0:
        F = F + truth.artifact[t]  # stimulation light in the detector: frame coordinates, does not move
    lam = F.astype(np.float64) * p.photons_per_unit
    if not noise:
        return (p.offset + p.gain * lam).astype(np.float32)
    rng = _rng(truth.seed, "noise", t)
    du = rng.poisson(lam).astype(np.float32)
    du *= np.float32(p.gain)
    du += np.float32(p.offset)
    if p.read_noise > 0:
        du += np.float32(p.read_noise) * rng.standard_normal((Y, X), dtype=np.float32)
    np.rint(du, out=du)
    np.clip(du, 0, UINT16_MAX, out=du)
    return du.astype(np.uint16)


def _default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _default_block(truth: GroundTruth) -> int:
    """Frames per block so that one float32 world block is ~16 MB."""
    p = truth.params
    per_frame = (p.height + 2 * truth.pad) * (p.width + 2 * truth.pad) * 4
    return int(max(1, min(256, 16e6 // per_frame)))


def iter_movie(
    truth: GroundTruth,
    start: int = 0,
    stop: int | None = None,
    *,
    block_frames: int | None = None,
    noise: bool = True,
    motion: bool = True,
    threads: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_frame, block)`` with blocks (n, Y, X) of the rendered movie.

    uint16 with ``noise=True``; float32 expected digital units (offset + gain * photons, no
    rounding or clipping) with ``noise=False``. ``motion=False`` renders the world (template)
    frame. Output is identical for any ``block_frames`` / ``threads``. Peak memory is about
    ``block_frames`` frames.
    """
    T = truth.n_frames
    stop = T if stop is None else stop
    if not (0 <= start <= stop <= T):
        raise CalflowInputError(f"frame range {start}:{stop} is outside 0:{T}", fix="pass 0 <= start <= stop <= T")
    block = int(block_frames or _default_block(truth))
    if block < 1:
        raise CalflowInputError(f"block_frames={block_frames} must be >= 1", fix="use e.g. 32")
    use_motion = motion and truth.has_motion
    grid = None
    if use_motion:
        Y, X = truth.params.height, truth.params.width
        grid = np.mgrid[0:Y, 0:X].astype(np.float64)
        _ = truth._basis_y, truth._basis_x, truth._static_field  # build the cached fields before threading
    n_threads = int(threads or _default_threads())
    starts = list(range(start, stop, block))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        # the next block's world is computed while this block's frames are warped and noised
        nxt = pool.submit(_world_block, truth, starts[0], min(stop, starts[0] + block)) if starts else None
        for i, a in enumerate(starts):
            b = min(stop, a + block)
            world = nxt.result()
            if i + 1 < len(starts):
                nxt = pool.submit(_world_block, truth, starts[i + 1], min(stop, starts[i + 1] + block))
            n = b - a
            frames = list(pool.map(_finish_frame, [truth] * n, range(a, b), world, [noise] * n,
                                   [use_motion] * n, [grid] * n))
            del world
            yield a, np.stack(frames)


def render_frames(
    truth: GroundTruth,
    start: int = 0,
    stop: int | None = None,
    *,
    noise: bool = True,
    motion: bool = True,
    block_frames: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Frames start..stop-1 as (n, Y, X): uint16 (noise) or float32 expected DU (noise=False)."""
    stop = truth.n_frames if stop is None else stop
    blocks = [b for _, b in iter_movie(truth, start, stop, block_frames=block_frames, noise=noise,
                                       motion=motion, threads=threads)]
    if not blocks:
        Y, X = truth.params.height, truth.params.width
        return np.zeros((0, Y, X), np.uint16 if noise else np.float32)
    return np.concatenate(blocks)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _gt_arrays(truth: GroundTruth) -> dict[str, np.ndarray]:
    """Every ground-truth array except the dense footprints (documented in docs/simulate.md)."""
    p = truth.params
    T = truth.n_frames
    gy, gx = p.nonrigid_grid
    cy, cx = np.meshgrid(truth.control_y, truth.control_x, indexing="ij")
    return {
        "centers": truth.centers,
        "radii": truth.radii,
        "semi_axes": truth.semi_axes,
        "angles": truth.angles,
        "overlap_partner": truth.overlap_partner,
        "f0": truth.f0,
        "spikes": truth.spikes,
        "calcium": truth.calcium,
        "rate_hz": truth.rate_hz,
        "g": truth.g,
        "tau_rise_s": truth.tau_rise_s,
        "tau_decay_s": truth.tau_decay_s,
        "spike_amplitude": truth.spike_amplitude,
        "spike_weight": truth.spike_weight,
        "population": truth.population,
        "neuropil_spatial": np.ascontiguousarray(truth.neuropil_spatial),
        "neuropil_trace": truth.neuropil_trace,
        "background_spatial": np.ascontiguousarray(truth.background_spatial),
        "background_temporal": truth.bg_traces,
        "baseline": np.float64(p.baseline),
        "world_pad": np.int64(truth.pad),
        "neuropil_spatial_world": truth.neuropil_map,
        "background_spatial_world": truth.bg_maps,
        "rigid_shifts": truth.rigid_shifts,
        "nonrigid_grid": truth.nonrigid_grid,
        "control_points_y": truth.control_y,
        "control_points_x": truth.control_x,
        "control_points_yx": np.stack([cy, cx], axis=-1).reshape(gy, gx, 2),
        "W": truth.W,
        "w_gain": np.float64(p.w_gain),
        "target_cells": truth.target_cells,
        "patterns": truth.patterns,
        "trial_start": truth.trial_start,
        "trial_stop": truth.trial_stop,
        "trial_pattern": truth.trial_pattern,
        "trial_block": truth.trial_block,
        "stim": truth.stim,
        "delay_frames": np.int64(truth.delay_frames),
        "fps": np.float64(p.fps),
        "seed": np.int64(truth.seed),
        "anatomy_seed": np.int64(truth.seed if truth.anatomy_seed is None else truth.anatomy_seed),
        "shape": np.array(truth.shape, np.int64),
        "photons_per_unit": np.float64(p.photons_per_unit),
        "gain": np.float64(p.gain),
        "offset": np.float64(p.offset),
        "read_noise": np.float64(p.read_noise),
        "params_json": np.array(json.dumps(p.to_dict(), sort_keys=True)),
        # per-session nuisance (docs/simulate.md, "Per-session nuisance")
        "expression_scale": np.float64(p.expression_scale),
        "cell_scale": _or(truth.cell_scale, np.ones(T, np.float32)),
        "bleach": _or(truth.bleach, np.ones(T, np.float32)),
        "artifact": _or(truth.artifact, np.zeros(T, np.float32)),
        "stim_drive": _or(truth.stim_drive, _stim_drive(p, truth.centers, truth.target_cells)[0]),
        "fov_offset": _or(truth.fov_offset, np.zeros(2)),
        "fov_rotation_deg": np.float64(truth.fov_rotation_deg),
        "fov_centers": truth.fov_centers,
    }


def _or(value: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if value is None else value


def save_ground_truth(truth: GroundTruth, path: str | Path) -> Path:
    """Write ``ground_truth.npz`` (deflate-compressed), streaming the dense (K, Y, X) footprints.

    Peak memory is one (Y, X) frame, not K*Y*X. ``np.load(path)["footprints"]`` reads them back.
    """
    path = Path(path)
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in _gt_arrays(truth).items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        Y, X = truth.params.height, truth.params.width
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (truth.n_cells, Y, X)}
        with zf.open("footprints.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for k in range(truth.n_cells):
                f.write(truth.footprint(k).astype("<f4").tobytes())
    return path


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a ``ground_truth.npz`` back into a :class:`GroundTruth` that renders identically.

    The footprints are streamed cell by cell (no K*Y*X array is allocated).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files if k != "footprints"}
        params = SimParams.from_dict(json.loads(str(a["params_json"])), source=path)
        K = a["centers"].shape[0]
        Y, X = params.height, params.width
        boxes = []
        with zipfile.ZipFile(path) as zf, zf.open("footprints.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            if tuple(shape) != (K, Y, X):
                raise ValueError(f"footprints shape {shape} != {(K, Y, X)}")
            for _ in range(K):
                fp = np.frombuffer(f.read(Y * X * dtype.itemsize), dtype=dtype).reshape(Y, X)
                ys, xs = np.nonzero(fp)
                if ys.size == 0:
                    boxes.append((0, 0, np.zeros((1, 1), np.float32)))
                    continue
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                boxes.append((int(y0), int(x0), np.array(fp[y0:y1, x0:x1], np.float32)))
    except CalflowInputError:
        raise
    except Exception as err:  # noqa: BLE001 - zip/npz/json raise many types
        raise CalflowInputError(
            f"not a readable calflow ground_truth.npz ({type(err).__name__}: {err})",
            file=path,
            fix="regenerate it with `calflow simulate`",
        ) from err
    return GroundTruth(
        params=params, seed=int(a["seed"]), centers=a["centers"], radii=a["radii"], semi_axes=a["semi_axes"],
        angles=a["angles"], overlap_partner=a["overlap_partner"], f0=a["f0"], boxes=boxes, rate_hz=a["rate_hz"],
        spikes=a["spikes"], calcium=a["calcium"], g=a["g"], tau_rise_s=a["tau_rise_s"],
        tau_decay_s=a["tau_decay_s"], spike_amplitude=a["spike_amplitude"], spike_weight=a["spike_weight"],
        population=a["population"], pad=int(a["world_pad"]), neuropil_map=a["neuropil_spatial_world"],
        neuropil_trace=a["neuropil_trace"], bg_maps=a["background_spatial_world"],
        bg_traces=a["background_temporal"], rigid_shifts=a["rigid_shifts"], nonrigid_grid=a["nonrigid_grid"],
        control_y=a["control_points_y"], control_x=a["control_points_x"], W=a["W"],
        target_cells=a["target_cells"], patterns=a["patterns"], trial_start=a["trial_start"],
        trial_stop=a["trial_stop"], trial_pattern=a["trial_pattern"], trial_block=a["trial_block"],
        stim=a["stim"], delay_frames=int(a["delay_frames"]),
        anatomy_seed=int(a["anatomy_seed"]) if "anatomy_seed" in a else None,
        cell_scale=a.get("cell_scale"), bleach=a.get("bleach"), artifact=a.get("artifact"),
        stim_drive=a.get("stim_drive"), fov_offset=a.get("fov_offset"),
        fov_rotation_deg=float(a["fov_rotation_deg"]) if "fov_rotation_deg" in a else 0.0,
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[Any]] | list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_movie(truth: GroundTruth, path: Path, block_frames: int | None, threads: int | None,
                 progress: bool = False) -> float:
    """Stream the movie into a (T, Y, X) uint16 TIFF; returns the seconds it took."""
    T, Y, X = truth.shape
    nbytes = T * Y * X * 2
    bigtiff = nbytes + 4096 * (T + 1) > 2**31 - 2**20
    t0 = time.perf_counter()
    log_every = max(1, T // 10)

    def pages() -> Iterator[np.ndarray]:
        next_log = log_every
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=T, desc="simulate", unit="frame")
        for a, block in iter_movie(truth, block_frames=block_frames, threads=threads):
            yield from block
            if bar is not None:
                bar.update(len(block))
            if a + len(block) >= next_log:
                log.info("simulate: rendered %d/%d frames (%.1f s)", a + len(block), T, time.perf_counter() - t0)
                next_log += log_every
        if bar is not None:
            bar.close()

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        tw.write(pages(), shape=(T, Y, X), dtype=np.uint16, photometric="minisblack",
                 metadata={"axes": "TYX", "fps": truth.fps}, software="calflow.simulate")
    return time.perf_counter() - t0


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that holds anything but a previous simulator output."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CalflowInputError("exists and is not a directory", file=out_dir, fix="choose a new output directory")
    foreign = sorted(e.name for e in out_dir.iterdir() if e.name not in SESSION_FILES.values())
    if foreign:
        raise CalflowInputError(
            f"output directory holds files the simulator did not write ({', '.join(foreign[:5])}); "
            "it would be replaced as a whole",
            file=out_dir,
            fix="choose an empty or new directory",
        )


def write_session(
    out_dir: str | Path,
    params: SimParams | None = None,
    seed: int = 0,
    *,
    anatomy_seed: int | None = None,
    block_frames: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Simulate and write one session directory; returns {key: path} for :data:`SESSION_FILES`.

    ``progress`` shows a tqdm bar while the movie is rendered.

    The directory is built next to ``out_dir`` and renamed into place when complete, so a
    killed run leaves no partial session. An existing ``out_dir`` is replaced only if it holds
    nothing but simulator files.
    """
    out_dir = Path(out_dir)
    p = params or SimParams()
    _check_out_dir(out_dir)
    t0 = time.perf_counter()
    truth = simulate(p, seed, anatomy_seed=anatomy_seed)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        movie_s = _write_movie(truth, tmp / SESSION_FILES["movie"], block_frames, threads, progress)
        save_ground_truth(truth, tmp / SESSION_FILES["ground_truth"])
        _write_csv(tmp / SESSION_FILES["stim_log"], ("frame", "targets"), enumerate(truth.stim_log()))
        _write_csv(
            tmp / SESSION_FILES["targets"],
            ("id", "y", "x", "radius"),
            [(j, f"{truth.centers[k, 0]:.3f}", f"{truth.centers[k, 1]:.3f}", f"{truth.radii[k]:.3f}")
             for j, k in enumerate(truth.target_cells)],
        )
        tifffile.imwrite(tmp / SESSION_FILES["masks"], truth.masks(), photometric="minisblack")
        meta = {
            "generator": GENERATOR,
            "calflow_version": __version__,
            "seed": truth.seed,
            "anatomy_seed": truth.anatomy_seed,
            "params": p.to_dict(),
            "movie": {"file": SESSION_FILES["movie"], "shape": list(truth.shape), "dtype": "uint16",
                      "axes": "TYX", "fps": truth.fps},
            "derived": {
                "n_trials": int(truth.trial_start.size),
                "n_patterns": int(truth.patterns.shape[0]),
                "delay_frames": truth.delay_frames,
                "world_pad": truth.pad,
                "g_mean": truth.g.mean(axis=0).tolist(),
                "render_seconds": round(movie_s, 3),
                "total_seconds": round(time.perf_counter() - t0, 3),
            },
            "conventions": {
                "shift": "(dy, dx) moves the content: world point q appears at q + D in frame t; "
                "frame_t(p) = world(p - D)",
                "W": "W[source, target]: row = stimulated/presynaptic cell, column = driven cell",
                "targets": "target id j is cell target_cells[j] (ground_truth.npz)",
            },
        }
        (tmp / SESSION_FILES["params"]).write_text(json.dumps(meta, indent=2) + "\n")
    return {key: out_dir / name for key, name in SESSION_FILES.items()}


# --------------------------------------------------------------------------------------------
# command line (wired into `calflow simulate` by calflow.cli)
# --------------------------------------------------------------------------------------------


def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``out_dir``, ``--seed``, ``--config``, ``--block-frames``, ``--threads`` and one
    ``--<param>`` option per :class:`SimParams` field (defaults come from SimParams)."""
    parser.add_argument("out_dir", type=Path, nargs="?", default=None,
                        help="session directory to write (created or replaced); or give --out")
    parser.add_argument("--out", type=Path, default=None, help="session directory to write (same as OUT_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the recording (default 0)")
    parser.add_argument("--anatomy-seed", type=int, default=None,
                        help="seed of cells, targets, W and maps (default: --seed); share it across an "
                        "animal's sessions")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON or YAML file of SimParams fields; command-line options override it")
    parser.add_argument("--block-frames", type=int, default=None,
                        help="frames rendered per block (memory vs speed; output is identical)")
    parser.add_argument("--threads", type=int, default=None, help="rendering threads (default min(2, CPUs))")
    group = parser.add_argument_group("simulation parameters (see docs/simulate.md)")
    hints = SimParams.field_types()
    for f in dataclasses.fields(SimParams):
        kind = hints[f.name]
        helptext = f"{f.metadata.get('help', '')} (default {f.default!r})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": helptext}
        if kind is bool:
            group.add_argument(_cli_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "nonrigid_grid":
            group.add_argument(_cli_flag(f.name), type=int, nargs=2, metavar=("GY", "GX"), **kw)
        elif f.name == "fov_offset":
            group.add_argument(_cli_flag(f.name), type=float, nargs=2, metavar=("DY", "DX"), **kw)
        elif kind is int or kind == (int | None):
            group.add_argument(_cli_flag(f.name), type=int, **kw)
        else:
            group.add_argument(_cli_flag(f.name), type=float, **kw)


def _load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise CalflowInputError(f"cannot read the config ({err.strerror})", file=path, fix="check the path") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - json/yaml errors
        raise CalflowInputError(f"not valid JSON/YAML ({err})", file=path, fix="fix the syntax") from err
    if isinstance(data, dict) and isinstance(data.get("params"), dict) and data.get("generator") == GENERATOR:
        data = data["params"]  # a params.json written by write_session
    if not isinstance(data, dict):
        raise CalflowInputError("must hold a mapping of parameter names to values", file=path,
                                fix="write e.g. {\"n_frames\": 2000}")
    return data


def params_from_args(args: argparse.Namespace) -> SimParams:
    """SimParams from parsed arguments: defaults < --config file < explicit options."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(_load_config(Path(args.config)))
        SimParams.from_dict(values, source=args.config)  # name the file if the file itself is bad
    for f in dataclasses.fields(SimParams):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if f.name in _PAIR_FIELDS else v
    return SimParams.from_dict(values)


def run_from_args(args: argparse.Namespace) -> Path:
    """Run :func:`write_session` from parsed arguments; returns the session directory."""
    out_dir = getattr(args, "out", None) or args.out_dir
    if out_dir is None:
        raise CalflowInputError("no output directory given", fix="pass --out DIR (or DIR as the first argument)")
    args.out_dir = Path(out_dir)
    params = params_from_args(args)
    write_session(args.out_dir, params, args.seed, anatomy_seed=getattr(args, "anatomy_seed", None),
                  block_frames=args.block_frames, threads=args.threads)
    return Path(args.out_dir)


def main_simulate(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m calflow.simulate OUT_DIR [options]``; returns 0 or 2."""
    parser = argparse.ArgumentParser(prog="calflow simulate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = run_from_args(args)
    except CalflowInputError as err:
        print(f"calflow simulate: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_simulate())
