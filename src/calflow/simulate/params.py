"""Simulator parameters and random streams.

:class:`SimParams` holds every knob of the simulator (units in the field names or help texts;
fluorescence in F units, see the class). :func:`draw_nuisance` draws one session's per-session
nuisance as SimParams overrides (distributions in :data:`NUISANCE`); :func:`study_params` makes a
calibration-study design. :func:`_rng` gives each model component its own random stream, so that
changing one knob leaves every other component bit-identical for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.params import invalid

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
    "turnover": 15,
    "warp": 16,
    "cell_change": 17,
}
_PAIR_FIELDS = ("nonrigid_grid", "fov_offset")  # tuple fields: lists in JSON / to_dict


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[stream], *(int(e) for e in extra)])


def _p(default: Any, help: str) -> Any:  # noqa: A002 - dataclass field with a help text
    return field(default=default, metadata={"help": help})


def _check_seed(name: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise CalflowInputError(f"{name}={seed!r} is not a non-negative integer", fix=f"pass e.g. {name}=0")
    return int(seed)


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
    # across days (defaults: none; the sessions of one animal share anatomy_seed, see docs/simulate.md)
    turnover: float = _p(0.0, "fraction of the animal's cells absent (no fluorescence) in this session, drawn "
                              "from the session seed: cells appearing/disappearing between days")
    warp_px: float = _p(0.0, "std in px of a smooth static warp of the cell layout in this session (3x3 "
                             "control grid, cubic spline, drawn from the session seed); 0 = none")
    brightness_change_cv: float = _p(0.0, "per-cell session factor on f0 and calcium (log-normal, mean 1, "
                                          "this cv; drawn from the session seed); 0 = none")

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

        hints = self.field_types()
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = hints[f.name]
            if kind is bool:
                if not isinstance(v, bool | np.bool_):
                    raise invalid("demo.sim", f.name, v,
                                  "must be true or false", f"set {f.name} to true or false", file=source)
            elif kind is int or kind == (int | None):
                if v is None and kind is not int:
                    continue
                if isinstance(v, bool) or not isinstance(v, int | np.integer):
                    raise invalid("demo.sim", f.name, v,
                                  "must be an integer", f"give {f.name} as a whole number", file=source)
            elif kind is float:
                if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                    raise invalid("demo.sim", f.name, v,
                                  "must be a number", f"give {f.name} as a number", file=source)
                if not math.isfinite(float(v)):
                    raise invalid("demo.sim", f.name, v,
                                  "must be finite", f"give {f.name} as a finite number", file=source)
        gy_gx = self.nonrigid_grid
        if (
            not isinstance(gy_gx, tuple | list)
            or len(gy_gx) != 2
            or not all(isinstance(g, int | np.integer) and not isinstance(g, bool) for g in gy_gx)
        ):
            raise invalid("demo.sim", "nonrigid_grid", gy_gx,
                          "must be two integers (gy, gx)", "give nonrigid_grid as e.g. (4, 4)", file=source)
        off = self.fov_offset
        if (
            not isinstance(off, tuple | list)
            or len(off) != 2
            or not all(isinstance(o, int | float | np.integer | np.floating) and not isinstance(o, bool)
                       and math.isfinite(float(o)) for o in off)
        ):
            raise invalid("demo.sim", "fov_offset", off,
                          "must be two finite numbers (dy, dx)", "give fov_offset as e.g. (1.0, -0.5) px", file=source)

        def need(cond: bool, name: str, problem: str, fix: str) -> None:
            if not cond:
                raise invalid("demo.sim", name, getattr(self, name), problem, fix, file=source)

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
        need(0 <= self.turnover <= 0.9, "turnover", "must be in [0, 0.9]", "use e.g. 0.1 (10% of the cells absent)")
        need(0 <= self.warp_px <= min(self.height, self.width) / 16, "warp_px",
             f"must be in [0, {min(self.height, self.width) / 16:g}] px (a 16th of the FOV)", "use e.g. 1.0 px")
        need(0 <= self.brightness_change_cv <= 1, "brightness_change_cv", "must be in [0, 1]", "use e.g. 0.2")
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
