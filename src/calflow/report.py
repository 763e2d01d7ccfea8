"""The HTML report: one self-contained page (``results/report/index.html``) a lab can read and share.

Every image is inlined as a ``data:`` URI, CSS and the little JavaScript (condition filter,
paginated tables) are inline, and the page references nothing outside itself, so it can be
mailed or archived as one file.

The page is assembled from **sections**. A section is a function registered with
:func:`section` that returns a ``dict`` of what to show, or ``None`` when its stage's outputs are
absent (the section is then left out: no empty headings). Scopes:

* ``run``: once per report (``fn(ctx)``), e.g. the overview table and provenance;
* ``condition``: once per condition of the sessions sheet (``fn(ctx, condition, sessions)``);
* ``session``: once per session (``fn(ctx, session)``).

The dict is handed to the Jinja macro ``section_<key>`` in ``templates/sections.html.j2``; a
section without its own macro is drawn by the ``generic`` macro, which shows the usual keys:
``facts`` (list of ``(label, value)``), ``notes`` (list of str), ``figures`` (list of
:class:`Figure`) and ``tables`` (list of :class:`Table`). Adding a stage to the report is one
decorated function here (and, if the generic layout is not enough, one macro). docs/report.md
has the details.

The library imports no Snakemake; ``workflow/scripts/report.py`` calls :func:`build_report`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import math
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from calflow import __version__  # noqa: E402
from calflow.config import PROFILE_LABELS  # noqa: E402
from calflow.io import atomic_output, open_group  # noqa: E402

log = logging.getLogger("calflow.report")

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"
SECTIONS_TEMPLATE = "sections.html.j2"

#: Packages whose versions the provenance section lists (those of the environment that renders
#: the report; with ``--sdm conda`` every rule family has its own env).
VERSION_PACKAGES = (
    "calflow", "numpy", "scipy", "torch", "zarr", "xarray", "dask", "numcodecs", "tifffile", "h5py",
    "pynwb", "pandas", "scikit-image", "scikit-learn", "matplotlib", "jinja2", "pyyaml", "snakemake",
)

# One colour per condition, in sheet order (matplotlib's tab10; the CSS uses the same values).
CONDITION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                     "#7f7f7f", "#bcbd22", "#17becf")


#: Outline colours on summary images (grey-scale): ground truth now; segmenter and CNMF later.
TRUTH_COLOUR = "#ff2d55"
SEGMENTER_COLOUR = "#00c8ff"
CNMF_COLOUR = "#ffd400"

# --------------------------------------------------------------------------------------------
# Building blocks handed to the templates
# --------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """An inline image: ``src`` is a ``data:image/png;base64,...`` URI."""

    title: str
    src: str
    caption: str = ""
    wide: bool = False  # span the full width of the page instead of one grid column


@dataclass
class Link:
    """A table cell or fact that links to an anchor of the page (``href='#id'``)."""

    text: str
    href: str


@dataclass
class Table:
    """A table; with more than ``page_size`` rows it is paginated in the browser.

    ``collapsed`` puts it in a closed ``<details>`` (for long reference tables).
    Cells are strings (escaped) or :class:`Link`.
    """

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    title: str = ""
    page_size: int = 25
    collapsed: bool = False
    numeric: list[bool] | None = None  # right-aligned columns; guessed from the cells if None

    def __post_init__(self) -> None:
        if self.numeric is None:
            self.numeric = [
                bool(self.rows) and all(_looks_numeric(r[i]) for r in self.rows) for i in range(len(self.columns))
            ]


def _looks_numeric(cell: Any) -> bool:
    if isinstance(cell, Link):
        return False
    return bool(re.fullmatch(r"[-+]?[\d,.]+(e[-+]?\d+)?\s*(%|px|s)?|[-–]|n/a", str(cell).strip()))


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a table: ``digits`` significant figures, thousands separators."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and abs(v) >= 10 ** digits:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(value)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_from_png(path: str | Path, title: str, caption: str = "", wide: bool = False) -> Figure | None:
    """Inline a PNG a stage wrote, or the SVG of the same name when the stage wrote only that
    (``None`` if neither exists)."""
    path = Path(path)
    for candidate, mime in ((path, "image/png"), (path.with_suffix(".svg"), "image/svg+xml")):
        if candidate.is_file() and candidate.stat().st_size > 0:
            src = f"data:{mime};base64," + base64.b64encode(candidate.read_bytes()).decode("ascii")
            return Figure(title=title, src=src, caption=caption, wide=wide)
    return None


def figure_from_mpl(fig: plt.Figure, title: str, caption: str = "", wide: bool = False, dpi: int = 100) -> Figure:
    """Inline a matplotlib figure as PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Figure(title=title, src=png_data_uri(buf.getvalue()), caption=caption, wide=wide)


def _show_image(ax: plt.Axes, img: np.ndarray, title: str, cmap: str = "gray") -> None:
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [1, 99.7]) if finite.size else (0, 1)
    ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def contour_overlay(ax: plt.Axes, labels: np.ndarray, colour: str, offset: tuple[float, float] = (0.0, 0.0),
                    label: str | None = None) -> int:
    """Draw the outline of every labelled region (label image, 0 = background) on ``ax``.

    ``offset`` (dy, dx) moves the outlines (e.g. from world to template coordinates). Each region
    is contoured on its own bounding box, so this stays fast for hundreds of cells. Returns the
    number of regions drawn. Segmenter and CNMF sections use the same helper.
    """
    from scipy import ndimage

    n = 0
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
        y1, x1 = min(sl[0].stop + 1, labels.shape[0]), min(sl[1].stop + 1, labels.shape[1])
        crop = (labels[y0:y1, x0:x1] == k).astype(float)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        ax.contour(xx + offset[1], yy + offset[0], crop, levels=[0.5], colors=[colour], linewidths=1.0)
        n += 1
    if label:
        ax.plot([], [], color=colour, lw=1, label=label)
    return n


# --------------------------------------------------------------------------------------------
# What the report is built from
# --------------------------------------------------------------------------------------------


@dataclass
class SessionInfo:
    """One row of the sessions sheet plus where its results are."""

    name: str
    condition: str
    movie: str
    fps: float
    results: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.results / self.name

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def anchor(self) -> str:
        return f"s-{self.name}"

    @property
    def truth_file(self) -> Path | None:
        """``ground_truth.npz`` next to the movie (simulated sessions), else ``None``."""
        movie = str(self.movie).split("#", 1)[0].split(";", 1)[0].strip()
        if not movie:
            return None
        path = Path(movie)
        if not path.is_absolute():
            path = self.results.parent / path
        candidate = (path if path.is_dir() else path.parent) / "ground_truth.npz"
        return candidate if candidate.is_file() else None


@dataclass
class ReportContext:
    """Everything a section function may read; ``cached`` shares loaded data between sections."""

    results: Path
    sessions: list[SessionInfo]
    config: dict[str, Any] = field(default_factory=dict)
    workflow_dir: Path | None = None
    extra_versions: dict[str, str] = field(default_factory=dict)
    generated: str = ""
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def conditions(self) -> dict[str, list[SessionInfo]]:
        out: dict[str, list[SessionInfo]] = {}
        for s in self.sessions:
            out.setdefault(s.condition, []).append(s)
        return out

    def colour(self, condition: str) -> str:
        names = list(self.conditions)
        return CONDITION_COLOURS[names.index(condition) % len(CONDITION_COLOURS)] if condition in names else "#555"

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def condition_anchor(condition: str) -> str:
    return "c-" + re.sub(r"[^A-Za-z0-9_.-]", "-", condition)


# --------------------------------------------------------------------------------------------
# Section registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    scope: str  # "run" | "condition" | "session"
    order: int
    build: Callable[..., dict[str, Any] | None]


SECTIONS: dict[str, SectionSpec] = {}
SCOPES = ("run", "condition", "session")


def section(key: str, title: str, *, scope: str, order: int) -> Callable:
    """Register a section builder. It returns a dict for the template, or None when absent."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
        raise ValueError(f"section key {key!r} must be a lower-case identifier (it names the macro)")

    def register(fn: Callable) -> Callable:
        SECTIONS[key] = SectionSpec(key, title, scope, order, fn)
        return fn

    return register


@dataclass
class RenderedSection:
    key: str
    id: str
    title: str
    macro: str
    data: dict[str, Any]


def _sections(scope: str) -> list[SectionSpec]:
    return sorted((s for s in SECTIONS.values() if s.scope == scope), key=lambda s: (s.order, s.key))


def _build(spec: SectionSpec, anchor: str, macros: set[str], *args: Any) -> RenderedSection | None:
    try:
        data = spec.build(*args)
    except Exception as err:  # noqa: BLE001 - one broken output must not cost the whole report
        log.exception("report section %s (%s) failed", spec.key, anchor)
        data = {"error": f"{type(err).__name__}: {err}"}
    if data is None:
        return None
    title = data.pop("title", spec.title)
    macro = f"section_{spec.key}"
    return RenderedSection(spec.key, anchor, title, macro if macro in macros else "generic", data)


# --------------------------------------------------------------------------------------------
# Stage data (cached per session)
# --------------------------------------------------------------------------------------------


def _attrs_json(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(attrs), default=str))


def load_motion(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Small arrays and attrs of ``motion.zarr`` (never the movie itself); None if absent."""

    def make() -> dict[str, Any] | None:
        store = s.dir / "motion.zarr"
        if not store.is_dir():
            return None
        g = open_group(store, mode="r")
        out: dict[str, Any] = {"attrs": _attrs_json(g.attrs)}
        for name in ("rigid_shifts", "patch_shifts", "patch_centers_y", "patch_centers_x", "corr_with_template",
                     "corr_with_template_before"):
            if name in g:
                out[name] = np.asarray(g[name])
        if "movie" in g:
            out["shape"] = tuple(int(n) for n in g["movie"].shape)
        return out

    return ctx.cached(("motion", s.name), make)


def load_summary(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    def make() -> dict[str, Any] | None:
        store = s.dir / "summary.zarr"
        if not store.is_dir():
            return None
        g = open_group(store, mode="r")
        out: dict[str, Any] = {"attrs": _attrs_json(g.attrs)}
        for name in ("mean", "local_corr", "pnr"):
            if name in g:
                out[name] = np.asarray(g[name])
        return out

    return ctx.cached(("summary", s.name), make)


def motion_metrics(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Scalar motion-quality numbers of a session (None without motion.zarr)."""
    m = load_motion(ctx, s)
    if m is None:
        return None
    a = m["attrs"]
    shape = m.get("shape") or (a.get("n_frames"), *(a.get("frame_shape") or (None, None)))
    before = m.get("corr_with_template_before")
    after = m.get("corr_with_template")
    rigid = m.get("rigid_shifts")
    cb, ca = a.get("crispness_before"), a.get("crispness_after")
    return {
        "n_frames": shape[0],
        "height": shape[1],
        "width": shape[2],
        "fps": a.get("fps", s.fps),
        "r_before": float(np.mean(before)) if before is not None else a.get("corr_with_template_before_mean"),
        "r_after": float(np.mean(after)) if after is not None else a.get("corr_with_template_after_mean"),
        "crisp_before": cb,
        "crisp_after": ca,
        "crisp_gain": (ca / cb - 1) if cb and ca else None,
        "max_rigid": (float(np.abs(rigid).max()) if rigid is not None and rigid.size
                      else a.get("max_abs_rigid_shift_px")),
        "max_patch": a.get("max_abs_patch_shift_px"),
        "frames_per_s": a.get("frames_per_s"),
        "device": a.get("device"),
        "piecewise": a.get("piecewise"),
        "patch_grid": a.get("patch_grid"),
    }


def truth_motion(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """calflow's shift estimates against the simulator's true motion (simulated sessions only).

    The truth is the within-session (rigid + non-rigid) displacement at the patch centres
    (:func:`calflow.simulate.true_displacement` with ``static=False``): the session's static
    field-of-view re-placement (offset, rotation) is part of its template, which the corrector
    registers to, not motion to correct, so it is no error. The template sits at the simulator's world
    frame up to a constant offset, so ``estimate = truth + offset`` and errors are measured after
    removing the mean difference (as in docs/motion.md). Two numbers: the error of the patch
    shifts (the field the movie was corrected with) and of the rigid shift against the true
    displacement averaged over the patch centres.
    """
    path = s.truth_file
    m = load_motion(ctx, s)
    if path is None or m is None or not {"rigid_shifts", "patch_shifts"} <= m.keys():
        return None

    def make() -> dict[str, Any] | None:
        from calflow.simulate import load_ground_truth, true_displacement

        truth = load_ground_truth(path)
        rigid = np.asarray(m["rigid_shifts"], dtype=float)
        patch = np.asarray(m["patch_shifts"], dtype=float)
        n_t = rigid.shape[0]
        if truth.rigid_shifts.shape[0] != n_t:
            return {"mismatch": f"the ground truth has {truth.rigid_shifts.shape[0]} frames, motion.zarr {n_t}"}
        cy = m.get("patch_centers_y", np.array([(truth.shape[1] - 1) / 2]))
        cx = m.get("patch_centers_x", np.array([(truth.shape[2] - 1) / 2]))
        centres = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 2)
        est = patch.reshape(n_t, -1, 2)
        if est.shape[1] != centres.shape[0]:  # e.g. piecewise off: one "patch" = the rigid shift
            est = np.repeat(rigid[:, None, :], centres.shape[0], axis=1)
        # Template point p is world point p + offset; first guess of the offset from the rigid part.
        offset0 = (rigid - truth.rigid_shifts).mean(axis=0)
        true = true_displacement(truth, slice(None), centres + offset0, static=False)  # (T, P, 2)
        offset = (est - true).mean(axis=(0, 1))
        err = est - true - offset
        true_mean = true.mean(axis=1)
        rigid_err = rigid - true_mean
        rigid_err -= rigid_err.mean(axis=0)
        return {
            "true_mean": true_mean,
            "true_lo": true.min(axis=1),
            "true_hi": true.max(axis=1),
            "rigid": rigid - (rigid - true_mean).mean(axis=0),
            "offset": offset,
            "n_points": centres.shape[0],
            "rmse": float(np.sqrt(np.mean(err**2))),
            "max_err": float(np.abs(err).max()),
            "rigid_rmse": float(np.sqrt(np.mean(rigid_err**2))),
            "true_rms": float(np.sqrt(np.mean((true - true.mean(axis=0)) ** 2))),
            "true_largest": float(np.abs(true - true.mean(axis=0)).max()),
        }

    return ctx.cached(("truth_motion", s.name), make)


# --------------------------------------------------------------------------------------------
# Provenance helpers
# --------------------------------------------------------------------------------------------


def git_commit(path: str | Path | None) -> str:
    """``<sha>`` (``-dirty`` with uncommitted changes to tracked files) or ``'unknown'``."""
    if path is None:
        return "unknown"
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else (sha or "unknown")


def package_versions(names: Iterable[str] = VERSION_PACKAGES, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    if out.get("calflow") == "not installed":  # a source checkout on PYTHONPATH (the conda envs)
        out["calflow"] = __version__
    out.update(extra or {})
    return out


_FINISHED = re.compile(r"^(\S+ \S+) \S+ INFO: rule (\S+) finished in ([\d.]+) s\s*$")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def rule_timings(logs_dir: str | Path, skip_rules: Sequence[str] = ("report",)) -> list[dict[str, Any]]:
    """One row per job log ``logs_dir/{rule}/{name}.log``.

    ``calflow.runner.run_script`` ends every successful job's log with ``rule X finished in N s``
    (the time spent in the stage function, without interpreter start-up). A log without that
    line belongs to a job that failed (an ``ERROR`` line) or has not finished.
    """
    rows = []
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        return rows
    for path in sorted(logs_dir.glob("*/*.log")):
        rule = path.parent.name
        if rule in skip_rules:
            continue
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        seconds, finished, status = None, None, "unfinished"
        for line in reversed(lines):
            m = _FINISHED.match(line)
            if m:
                finished, seconds, status = m.group(1).split(",")[0], float(m.group(3)), "ok"
                break
        if status != "ok" and any(" ERROR: " in ln or ln.startswith("calflow error") for ln in lines):
            status = "failed"
        started = next((m.group(1) for ln in lines if (m := _STAMP.match(ln))), None)
        rows.append({"rule": rule, "job": path.stem, "seconds": seconds, "status": status,
                     "started": started, "finished": finished})
    return rows


def _plain(obj: Any) -> Any:
    """Snakemake's config objects -> plain dicts/lists for YAML."""
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------
# Sections of the stages that exist (later stages add theirs the same way)
# --------------------------------------------------------------------------------------------


def _r_pair(before: Any, after: Any, digits: int = 3) -> str:
    return f"{fmt(before, digits)} → {fmt(after, digits)}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x * 100:+.1f} %"


@section("overview", "Overview", scope="run", order=10)
def overview_section(ctx: ReportContext) -> dict[str, Any] | None:
    rows, metrics = [], []
    for s in ctx.sessions:
        mm = motion_metrics(ctx, s)
        tm = truth_motion(ctx, s)
        summ = load_summary(ctx, s)
        metrics.append((s, mm))
        rows.append([
            Link(s.name, "#" + s.anchor),
            Link(s.condition, "#" + condition_anchor(s.condition)),
            fmt(mm["n_frames"]) if mm else "–",
            f"{mm['height']} × {mm['width']}" if mm else "–",
            fmt(s.fps),
            fmt(mm["n_frames"] / s.fps, 3) + " s" if mm and s.fps else "–",
            fmt(mm["max_rigid"], 2) if mm else "–",
            _r_pair(mm["r_before"], mm["r_after"]) if mm else "–",
            _pct(mm["crisp_gain"]) if mm else "–",
            fmt(float(summ["local_corr"].max()), 2) if summ and "local_corr" in summ else "–",
            fmt(tm["rmse"], 2) if tm and "rmse" in tm else "–",
        ])
    table = Table(
        columns=["session", "condition", "frames", "frame (px)", "fps", "duration", "max |rigid shift| (px)",
                 "r with template, raw → corrected", "crispness gain", "max local corr.",
                 "shift error vs truth (px RMS)"],
        rows=rows,
        numeric=[False, False, True, True, True, True, True, True, True, True, True],
        caption="One row per session of the sessions sheet. r: mean Pearson correlation of each frame with the "
                "motion template; crispness: norm of the gradient of the mean image (higher = sharper). The "
                "last column, for simulated sessions only, is the RMS error of the estimated shifts at the "
                "patch centres against the simulated displacement there (constant template offset removed).",
    )
    figures = []
    have = [(s, mm) for s, mm in metrics if mm and mm["r_before"] is not None and mm["r_after"] is not None]
    if have:
        figures.append(_overview_figure(ctx, have))
    conditions = ", ".join(f"{c} ({len(v)})" for c, v in ctx.conditions.items())
    cells = segmenter_source(ctx)
    return {
        "facts": [("sessions", str(len(ctx.sessions))), ("conditions", conditions),
                  *([("cells found by", cells)] if cells else []),
                  ("results directory", str(ctx.results.resolve()))],
        "tables": [table],
        "figures": figures,
    }


def _overview_figure(ctx: ReportContext, have: list[tuple[SessionInfo, dict[str, Any]]]) -> Figure:
    n = len(have)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.32 * n), sharey=True, squeeze=True)
    y = np.arange(n)[::-1]
    for yi, (s, mm) in zip(y, have, strict=True):
        c = ctx.colour(s.condition)
        axes[0].plot([mm["r_before"], mm["r_after"]], [yi, yi], color=c, lw=1.5)
        axes[0].plot(mm["r_before"], yi, "o", mfc="white", mec=c)
        axes[0].plot(mm["r_after"], yi, "o", color=c)
        if mm["crisp_gain"] is not None:
            axes[1].barh(yi, mm["crisp_gain"] * 100, color=c, height=0.6)
    axes[0].set_yticks(y, [s.name for s, _ in have], fontsize=8)
    axes[0].set_xlabel("mean r with template (open: raw, filled: corrected)")
    axes[1].set_xlabel("crispness gain of the mean image (%)")
    axes[1].axvline(0, color="k", lw=0.6)
    handles = [plt.Line2D([], [], color=ctx.colour(c), lw=3, label=c) for c in ctx.conditions]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right", frameon=False)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Motion correction per session", fontsize=10)
    return figure_from_mpl(fig, "Motion correction at a glance",
                           "Each session's mean correlation with the template before and after correction, "
                           "and how much sharper the mean image became. Colours are conditions.", wide=True)


@section("provenance", "Run provenance", scope="run", order=90)
def provenance_section(ctx: ReportContext) -> dict[str, Any] | None:
    versions = package_versions(extra=ctx.extra_versions)
    facts = [
        ("generated", ctx.generated),
        ("calflow version", versions.get("calflow", __version__)),
        ("git commit", git_commit(ctx.workflow_dir)),
        ("workflow directory", str(ctx.workflow_dir) if ctx.workflow_dir else "unknown"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    tables = []
    timings = rule_timings(ctx.results / "logs")
    if timings:
        per_rule: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(timings, key=lambda r: r["started"] or "~"):  # rules in the order they first ran
            per_rule.setdefault(row["rule"], []).append(row)
        summary_rows = []
        for rule, rows in per_rule.items():
            secs = [r["seconds"] for r in rows if r["seconds"] is not None]
            bad = [r for r in rows if r["status"] != "ok"]
            summary_rows.append([rule, fmt(len(rows)), f"{sum(secs):.1f}" if secs else "–",
                                 f"{np.mean(secs):.1f}" if secs else "–", f"{max(secs):.1f}" if secs else "–",
                                 ", ".join(f"{r['job']} ({r['status']})" for r in bad) or "none"])
        tables.append(Table(
            title="Timings per rule",
            columns=["rule", "jobs", "total (s)", "mean per job (s)", "slowest job (s)", "failed / unfinished"],
            rows=summary_rows,
            caption="From the job logs results/logs/{rule}/{job}.log: the time each job spent in its calflow "
                    "stage function (interpreter start-up and Snakemake's scheduling not included).",
        ))
        tables.append(Table(
            title="Timings per job",
            columns=["rule", "job", "seconds", "status", "started", "finished"],
            rows=[[r["rule"], r["job"], "–" if r["seconds"] is None else f"{r['seconds']:.1f}", r["status"], r["started"] or "–", r["finished"] or "–"]
                  for r in timings],
            collapsed=True,
        ))
    tables.append(Table(
        title="Package versions",
        columns=["package", "version"],
        rows=[[k, v] for k, v in versions.items()],
        caption="Versions in the environment that rendered this report. With --sdm conda every rule family "
                "runs in its own environment (envs/*.yaml); the stores record the calflow version that wrote them.",
        collapsed=True,
        numeric=[False, False],
    ))
    sheet_cols = ["session", "condition", "fps", "movie"]
    extra_cols = sorted({k for s in ctx.sessions for k, v in s.extra.items() if v not in (None, "")})
    tables.append(Table(
        title="Sessions sheet",
        columns=sheet_cols + extra_cols,
        rows=[[s.name, s.condition, fmt(s.fps), s.movie, *[str(s.extra.get(k) or "") for k in extra_cols]]
              for s in ctx.sessions],
        collapsed=True,
        numeric=[False] * (len(sheet_cols) + len(extra_cols)),
    ))
    config_text = yaml.safe_dump(_plain(ctx.config), sort_keys=False, default_flow_style=None) if ctx.config else ""
    return {"facts": facts, "tables": tables, "code": [("Configuration (after defaults)", config_text)]
            if config_text else []}


@section("condition_overview", "Sessions and motion", scope="condition", order=10)
def condition_overview_section(ctx: ReportContext, condition: str, sessions: list[SessionInfo]) -> dict[str, Any]:
    rows = []
    gains, r_after = [], []
    for s in sessions:
        mm = motion_metrics(ctx, s)
        if mm:
            if mm["crisp_gain"] is not None:
                gains.append(mm["crisp_gain"])
            if mm["r_after"] is not None:
                r_after.append(mm["r_after"])
        rows.append([Link(s.name, "#" + s.anchor), fmt(mm["n_frames"]) if mm else "–",
                     _r_pair(mm["r_before"], mm["r_after"]) if mm else "–",
                     _pct(mm["crisp_gain"]) if mm else "–"])
    facts = [("sessions", str(len(sessions)))]
    if r_after:
        facts.append(("mean r with template, corrected", f"{np.mean(r_after):.3f}"))
    if gains:
        facts.append(("mean crispness gain", _pct(float(np.mean(gains)))))
    return {"facts": facts, "tables": [Table(columns=["session", "frames", "r with template, raw → corrected",
                                                      "crispness gain"], rows=rows,
                                             numeric=[False, True, True, True])]}


@section("motion", "Motion correction", scope="session", order=20)
def motion_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    mm = motion_metrics(ctx, s)
    if mm is None:
        return None
    facts = [
        ("frames", f"{fmt(mm['n_frames'])} of {mm['height']} × {mm['width']} px at {fmt(mm['fps'])} frames/s"),
        ("r with template, raw → corrected", _r_pair(mm["r_before"], mm["r_after"])),
        ("crispness of the mean image", f"{_r_pair(mm['crisp_before'], mm['crisp_after'], 4)} ({_pct(mm['crisp_gain'])})"),
        ("largest rigid shift", f"{fmt(mm['max_rigid'], 3)} px"),
    ]
    if mm["piecewise"]:
        grid = mm["patch_grid"]
        facts.append(("largest patch shift", f"{fmt(mm['max_patch'], 3)} px ({' × '.join(map(str, grid or []))} patches)"))
    if mm["frames_per_s"]:
        facts.append(("speed", f"{fmt(mm['frames_per_s'])} frames/s on {mm['device'] or '?'}"))
    d = s.plots / "motion"
    figures = [f for f in (  # two small figures side by side, then the tall one across
        figure_from_png(d / "motion_mean_images.png", "Mean image before / after",
                        "A sharper mean image after correction means the frames were registered."),
        figure_from_png(d / "motion_correlation.png", "Correlation with the template",
                        "Each frame's Pearson r with the template before (grey) and after (blue) correction; "
                        "right: after against before (points above the diagonal improved)."),
        figure_from_png(d / "motion_shifts.png", "Shifts",
                        "Rigid shift (black) and the range of patch shifts (orange) over time, in px; bottom: "
                        "the largest deviation of a patch from the rigid shift.", wide=True),
    ) if f is not None]
    return {"facts": facts, "figures": figures}


@section("summary", "Summary images", scope="session", order=30)
def summary_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    summ = load_summary(ctx, s)
    fig = figure_from_png(s.plots / "summary" / "summary_images.png", "Summary images",
                          "Mean, maximum, standard deviation, local correlation (mean r with the 8 neighbours) "
                          "and peak-to-noise ratio of the motion-corrected movie. Cells stand out in the last two.",
                          wide=True)
    if summ is None and fig is None:
        return None
    facts = []
    if summ is not None:
        if "local_corr" in summ:
            lc = summ["local_corr"]
            facts.append(("local correlation, median / 99th percentile",
                          f"{np.median(lc):.3f} / {np.percentile(lc, 99):.3f}"))
        if "pnr" in summ:
            facts.append(("peak-to-noise ratio, median / 99th percentile",
                          f"{np.median(summ['pnr']):.2f} / {np.percentile(summ['pnr'], 99):.2f}"))
    return {"facts": facts, "figures": [fig] if fig else []}


@section("truth", "Against the simulation's ground truth", scope="session", order=90)
def truth_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    path = s.truth_file
    if path is None:
        return None
    tm = truth_motion(ctx, s)
    facts: list[tuple[str, str]] = [("ground truth", str(path))]
    notes: list[str] = []
    figures: list[Figure] = []
    with np.load(path) as z:
        n_cells = int(z["centers"].shape[0]) if "centers" in z.files else None
        n_targets = int(z["target_cells"].shape[0]) if "target_cells" in z.files else None
        w_gain = float(z["w_gain"]) if "w_gain" in z.files else None
    if n_cells is not None:
        facts.append(("simulated cells / photostimulation targets", f"{n_cells} / {n_targets}"))
    if w_gain is not None:
        facts.append(("connectivity gain (condition)", fmt(w_gain)))
    if tm and "mismatch" in tm:
        notes.append(f"Motion not compared: {tm['mismatch']}.")
    elif tm:
        facts += [
            ("true motion at the patch centres", f"{tm['true_rms']:.2f} px RMS, largest {tm['true_largest']:.2f} px"),
            ("error of the estimated shifts there", f"{tm['rmse']:.3f} px RMS, largest {tm['max_err']:.2f} px"),
            ("error of the rigid shift (vs the mean true displacement)", f"{tm['rigid_rmse']:.3f} px RMS"),
            ("template offset from the world frame", f"({tm['offset'][0]:+.2f}, {tm['offset'][1]:+.2f}) px"),
        ]
        figures.append(_truth_shift_figure(s, tm))
    summ = load_summary(ctx, s)
    labels = _truth_labels(path)
    if labels is not None and summ is not None and "local_corr" in summ:
        offset = tuple(tm["offset"]) if tm and "offset" in tm else (0.0, 0.0)
        fig, inside, outside = _truth_contour_figure(summ["local_corr"], labels, offset)
        if fig is not None:
            figures.append(fig)
            facts.append(("local correlation inside / outside true cells", f"{inside:.3f} / {outside:.3f}"))
    return {"facts": facts, "notes": notes, "figures": figures}


def _truth_shift_figure(s: SessionInfo, tm: dict[str, Any]) -> Figure:
    n_t = tm["rigid"].shape[0]
    t = np.arange(n_t) / s.fps if s.fps else np.arange(n_t)
    fig, axes = plt.subplots(2, 1, figsize=(8, 3.8), sharex=True)
    for k, name in enumerate(("dy", "dx")):
        ax = axes[k]
        if tm["n_points"] > 1:
            ax.fill_between(t, tm["true_lo"][:, k], tm["true_hi"][:, k], color="0.8", lw=0,
                            label="true, range over patch centres")
        ax.plot(t, tm["true_mean"][:, k], color="k", lw=1.2, label="true, mean")
        ax.plot(t, tm["rigid"][:, k], color="tab:orange", lw=0.9, ls="--", label="estimated rigid shift")
        ax.set_ylabel(f"{name} (px)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncol=3, frameon=False)
    axes[1].set_xlabel("time (s)" if s.fps else "frame")
    return figure_from_mpl(fig, "Shifts against the truth",
                           "The simulated displacement (mean over the patch centres in black, their range in "
                           "grey) and calflow's rigid estimate (orange, constant template offset removed). "
                           f"The patch shifts are off by {tm['rmse']:.3f} px RMS.")


def _truth_labels(truth_file: Path) -> np.ndarray | None:
    """The simulated cells as a label image: masks.tif next to the truth, else from the footprints."""
    masks = truth_file.parent / "masks.tif"
    if masks.is_file():
        import tifffile

        return np.asarray(tifffile.imread(masks)).astype(np.int32)
    with np.load(truth_file) as z:
        if "footprints" not in z.files:
            return None
        footprints = np.asarray(z["footprints"])
    if footprints.ndim != 3:
        return None
    # As masks.tif: the strongest footprint >= 0.5 wins.
    return np.where(footprints.max(axis=0) >= 0.5, footprints.argmax(axis=0) + 1, 0).astype(np.int32)


def _truth_contour_figure(local_corr: np.ndarray, labels: np.ndarray,
                          offset: tuple[float, float]) -> tuple[Figure | None, float, float]:
    if labels.shape != local_corr.shape:
        return None, float("nan"), float("nan")
    # World point q sits at q - offset in the template (= corrected movie) frame.
    move = (-float(offset[0]), -float(offset[1]))
    shifted = np.roll(labels, (int(round(move[0])), int(round(move[1]))), axis=(0, 1))
    inside = float(local_corr[shifted > 0].mean()) if (shifted > 0).any() else float("nan")
    outside = float(local_corr[shifted == 0].mean()) if (shifted == 0).any() else float("nan")
    fig, ax = plt.subplots(figsize=(5, 5))
    _show_image(ax, local_corr, "local correlation + true cell outlines")
    n = contour_overlay(ax, labels, TRUTH_COLOUR, offset=move)
    ax.set_xlim(-0.5, local_corr.shape[1] - 0.5)
    ax.set_ylim(local_corr.shape[0] - 0.5, -0.5)
    return (figure_from_mpl(fig, "Cells in the local-correlation image",
                            f"Outlines of the {n} simulated cells (footprint ≥ 0.5, moved by the template "
                            "offset) on the local-correlation image of the corrected movie."),
            inside, outside)


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.tests["link"] = lambda x: isinstance(x, Link)
    return env


def sessions_from_records(records: Iterable[Mapping[str, Any]], results: str | Path) -> list[SessionInfo]:
    """SessionInfo from sessions-sheet rows (dicts with session, movie, condition, fps, ...)."""
    out = []
    for r in records:
        r = dict(r)
        name = str(r.pop("session"))
        out.append(SessionInfo(
            name=name, condition=str(r.pop("condition")), movie=str(r.pop("movie")), fps=float(r.pop("fps")),
            results=Path(results),
            extra={k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()},
        ))
    return out


_FORKED: tuple[ReportContext, set[str]] | None = None  # what forked workers render from (set before forking)


def _session_page(ctx: ReportContext, macros: set[str], s: SessionInfo) -> dict[str, Any]:
    """One session's part of the page: its sections and header."""
    secs = [r for spec in _sections("session") if (r := _build(spec, f"{s.anchor}-{spec.key}", macros, ctx, s))]
    mm = motion_metrics(ctx, s)
    return {"info": s, "id": s.anchor, "colour": ctx.colour(s.condition), "sections": secs,
            "shape": f"{fmt(mm['n_frames'])} frames × {mm['height']} × {mm['width']} px" if mm else ""}


def _forked_session_page(i: int) -> dict[str, Any]:
    assert _FORKED is not None
    ctx, macros = _FORKED
    return _session_page(ctx, macros, ctx.sessions[i])


def render_report(ctx: ReportContext, *, progress: bool = False, workers: int = 1) -> str:
    """Build every section that has data and render the page (a str of HTML).

    ``workers`` > 1 (Linux): the per-session sections are built in that many forked processes while
    this one builds the run and condition sections; the page is the same (sections in sheet order)."""
    global _FORKED
    env = _environment()
    macros = {n for n in dir(env.get_template(SECTIONS_TEMPLATE).module) if not n.startswith("_")}
    pool = None
    if workers > 1 and len(ctx.sessions) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _FORKED = (ctx, macros)
        pool = ProcessPoolExecutor(min(workers, len(ctx.sessions)), mp_context=multiprocessing.get_context("fork"))
        pending = pool.map(_forked_session_page, range(len(ctx.sessions)))
    try:
        run = [r for spec in _sections("run") if (r := _build(spec, spec.key, macros, ctx))]
        conditions = []
        for cond, sessions_of in ctx.conditions.items():
            anchor = condition_anchor(cond)
            secs = [r for spec in _sections("condition")
                    if (r := _build(spec, f"{anchor}-{spec.key}", macros, ctx, cond, sessions_of))]
            conditions.append({"name": cond, "id": anchor, "colour": ctx.colour(cond), "sessions": sessions_of,
                               "sections": secs})
        if pool is not None:
            sessions = list(pending)
        else:
            session_iter: Iterable[SessionInfo] = ctx.sessions
            if progress:
                from tqdm import tqdm

                session_iter = tqdm(ctx.sessions, desc="report", unit="session")
            sessions = [_session_page(ctx, macros, s) for s in session_iter]
    finally:
        if pool is not None:
            pool.shutdown()
            _FORKED = None
    html = env.get_template(PAGE_TEMPLATE).render(
        title="calflow report", generated=ctx.generated, version=__version__, run_sections=run,
        conditions=conditions, sessions=sessions, n_sessions=len(ctx.sessions),
    )
    return html


def build_report(
    results: str | Path,
    out_html: str | Path,
    *,
    sessions: Iterable[Mapping[str, Any]] | Sequence[SessionInfo],
    config: Mapping[str, Any] | None = None,
    workflow_dir: str | Path | None = None,
    extra_versions: Mapping[str, str] | None = None,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Collect what ``results`` holds for ``sessions`` and write the self-contained page.

    ``sessions``: sessions-sheet rows (dicts) or :class:`SessionInfo`. Missing stage outputs
    leave their sections out. The file is written atomically. Returns its path. ``workers``: see
    :func:`render_report`.
    """
    results = Path(results)
    infos = [s if isinstance(s, SessionInfo) else None for s in sessions]  # type: ignore[misc]
    if not all(infos):
        infos = sessions_from_records(sessions, results)  # type: ignore[arg-type]
    ctx = ReportContext(
        results=results,
        sessions=list(infos),  # type: ignore[arg-type]
        config=_plain(dict(config or {})),
        workflow_dir=Path(workflow_dir).resolve() if workflow_dir else None,
        extra_versions=dict(extra_versions or {}),
        generated=_dt.datetime.now(_dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    html = render_report(ctx, progress=progress, workers=workers)
    out_html = Path(out_html)
    with atomic_output(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("report: %s (%d sessions, %.1f MB)", out_html, len(ctx.sessions), out_html.stat().st_size / 1e6)
    return out_html


__all__ = [
    "SECTIONS", "Figure", "Link", "ReportContext", "SessionInfo", "Table", "build_report", "contour_overlay",
    "figure_from_mpl", "figure_from_png", "fmt", "git_commit", "package_versions", "render_report",
    "rule_timings", "section", "sessions_from_records",
]


def segmenter_source(ctx: ReportContext, attrs: dict[str, Any] | None = None) -> str | None:
    """Where the run's cells come from, in words: the segmenter trained in the run (fine-tuned or from
    scratch), a given file, the bundled generalist (segment.init: generalist, or no annotated session),
    or corr_pnr seeds."""
    if attrs is not None and attrs.get("method") == "corr_pnr":
        return "annotation-free correlation × peak-to-noise seeds of the corrected movie (segment.method: corr_pnr, no network)"
    path = ctx.results / "models" / "segmenter_metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    source = m.get("source", "given" if m.get("pretrained") else "trained")
    if source == "generalist":
        why = ("used without fine-tuning (segment.init: generalist), the annotated sessions only score it"
               if m.get("reason") == "segment.init" else "no session of the sheet has masks to train on")
        return (f"the bundled generalist segmenter, trained on simulated sessions only: {why} "
                f"({Path(m.get('pretrained', '')).name})")
    if source == "given":
        return f"the segmenter file given in the config (segment.pretrained: {m.get('pretrained')})"
    init = m.get("init", "scratch")
    how = "fine-tuned from the bundled generalist" if init != "scratch" else "trained from scratch"
    stop = (f", stopped on a validation plateau at iteration {m.get('iterations')}" if m.get("stopped_on_plateau")
            else f", {m.get('iterations')} iterations")
    return (f"the segmenter trained in this run on {', '.join(m.get('train_sessions', []))} ({how}{stop}; best "
            f"validation F1 {fmt(m.get('best_score'))})" + (f"; {m['init_note']}" if m.get("init_note") else ""))


@section("segment", "Cell segmentation", scope="session", order=40)
def segment_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Footprints of the segmenter on the local-correlation image; F1 against the masks when present."""
    store = s.dir / "footprints.zarr"
    if not store.is_dir():
        return None
    g = open_group(store, mode="r")
    labels = np.asarray(g["labels"])
    attrs = _attrs_json(g.attrs)
    facts: list[tuple[str, str]] = [("cells found", fmt(int(attrs.get("n_components", labels.max()))))]
    source = segmenter_source(ctx, attrs)
    if source:
        facts.append(("found by", source))
    ev_path = s.dir / "segment_eval.json"
    truth = None
    if ev_path.is_file():
        ev = json.loads(ev_path.read_text())
        iou, cen = ev["iou"], ev["centroid"]
        facts += [
            ("annotated cells", fmt(iou["n_true"])),
            ("F1 (IoU ≥ 0.5), precision / recall",
             f"{iou['f1']:.3f}, {iou['precision']:.3f} / {iou['recall']:.3f}"
             f" ({'held out' if ev.get('heldout') else 'a training session'})"),
            ("F1, Neurofinder centroid criterion", f"{cen['f1']:.3f}"),
        ]
        masks = Path(ev.get("masks", ""))
        if not masks.is_absolute():
            masks = ctx.results.parent / masks
        if masks.is_file():
            from calflow.metrics import masks_to_labels, read_masks

            truth = masks_to_labels(read_masks(masks, labels.shape), labels.shape)
    summ = load_summary(ctx, s)
    figures = []
    if summ is not None and "local_corr" in summ:
        fig, ax = plt.subplots(figsize=(5, 5 * labels.shape[0] / max(labels.shape[1], 1)))
        ax.imshow(summ["local_corr"], cmap="gray")
        if truth is not None:
            contour_overlay(ax, truth, TRUTH_COLOUR, label="masks")
        contour_overlay(ax, labels, SEGMENTER_COLOUR, label="segmenter")
        ax.legend(loc="upper right", fontsize=7)
        ax.set_axis_off()
        figures.append(figure_from_mpl(fig, "Footprints", "Cells found by the segmenter (blue) on the local-correlation "
                                       "image" + (", with the annotated masks (red)." if truth is not None else ".")))
    return {"facts": facts, "figures": figures}


def _cnmf_labels(A: Any, shape: tuple[int, int], threshold: float = 0.3) -> np.ndarray:
    """(H, W) label image of CNMF footprints: k + 1 where component k is >= ``threshold`` of its max
    and the largest there (overlaps go to the brighter footprint)."""
    dense = np.asarray(A.toarray(), np.float32)
    if dense.shape[0] == 0:
        return np.zeros(shape, np.int32)
    dense /= np.maximum(dense.max(axis=1, keepdims=True), 1e-12)
    best = dense.argmax(axis=0)
    on = dense.max(axis=0) >= threshold
    return np.where(on, best + 1, 0).reshape(shape).astype(np.int32)


@section("cnmf", "Traces (CNMF)", scope="session", order=50)
def cnmf_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """CNMF footprints against the segmenter's, example traces with spikes, per-component metrics and,
    for simulated sessions, accuracy against the ground truth."""
    store = s.dir / "cnmf.zarr"
    if not store.is_dir():
        return None
    from calflow.cnmf.store import read_cnmf

    r = read_cnmf(store)
    attrs = r["attrs"]
    H, W = attrs["frame_shape"]
    K, T = r["C"].shape
    acc = np.asarray(r["accepted"], bool)
    facts: list[tuple[str, str]] = [
        ("components (accepted / all)", f"{int(acc.sum())} / {K}"),
        ("seeds from the segmenter", fmt(attrs.get("n_seeds", "?"))),
        ("merged groups, added from the residual", f"{len(attrs.get('merged', []))}, {attrs.get('n_added', 0)}"),
        ("backend, passes over the movie", f"{attrs.get('backend', '?')}, {attrs.get('passes', '?')}"),
    ]
    seg_store = s.dir / "footprints.zarr"
    notes: list[str] = []
    truth = s.truth_file
    if truth is not None and seg_store.is_dir() and (s.dir / "motion.zarr").is_dir():
        from calflow.cnmf.accuracy import session_accuracy

        a = session_accuracy(store, truth, s.dir / "motion.zarr", seg_store)
        facts += [
            ("median r with the true calcium: CNMF C / raw mask average (same cells)",
             f"{fmt(a['median_r_C'])} / {fmt(a['median_r_raw_masks'])} (n = {a['n_compared']})"),
            ("spike-time F1 (median over matched accepted components, ±2 frames)", fmt(a["median_spike_f1"])),
            ("F1 of accepted components / of the segmenter's cells (IoU ≥ 0.5)",
             f"{fmt(a['f1_accepted'])} / {fmt(a['f1_seeds'])}"),
        ]
        notes.append("Ground truth: the simulator's footprints ≥ 0.5 of their maximum (overlaps kept); components "
                     "are matched to true cells by the Hungarian algorithm on IoU.")
    figures = []
    summ = load_summary(ctx, s)
    if summ is not None and "local_corr" in summ:
        fig, ax = plt.subplots(figsize=(5, 5 * H / max(W, 1)))
        ax.imshow(summ["local_corr"], cmap="gray")
        if seg_store.is_dir():
            seg = open_group(seg_store, mode="r")
            if "labels" in seg:
                contour_overlay(ax, np.asarray(seg["labels"]), SEGMENTER_COLOUR, label="segmenter")
        contour_overlay(ax, _cnmf_labels(r["A"][np.flatnonzero(acc)], (H, W)), CNMF_COLOUR, label="CNMF (accepted)")
        ax.legend(loc="upper right", fontsize=7)
        ax.set_axis_off()
        figures.append(figure_from_mpl(fig, "Footprints", "Accepted CNMF components (yellow) and the segmenter's "
                                       "cells that seeded them (blue) on the local-correlation image."))
    show = np.flatnonzero(acc)[np.argsort(-r["snr"][acc])][:6]
    if show.size:
        fps = float(attrs.get("fps", 1.0)) or 1.0
        t = np.arange(T) / fps
        fig, axes = plt.subplots(show.size, 1, figsize=(9, 1.2 * show.size + 0.4), sharex=True, squeeze=False)
        for ax, k in zip(axes[:, 0], show, strict=True):
            ax.plot(t, r["dff"][k], lw=0.6, color="0.35", label="dF/F")
            spk = np.flatnonzero(r["S"][k] > 0.25 * max(float(np.percentile(r["S"][k][r["S"][k] > 0], 95))
                                                      if (r["S"][k] > 0).any() else 1.0, 1e-12))
            top = float(np.nanmax(r["dff"][k])) if T else 1.0
            ax.vlines(t[spk], top * 1.05, top * 1.2, color=CONDITION_COLOURS[3], lw=0.6, label="spikes")
            ax.set_ylabel(f"#{k}", rotation=0, ha="right", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0, 0].legend(loc="upper right", fontsize=7, ncol=2)
        axes[-1, 0].set_xlabel("time (s)")
        figures.append(figure_from_mpl(fig, "Example traces", f"dF/F and inferred spikes of the {show.size} accepted "
                                       "components with the highest SNR.", wide=True))
    cent = r["centroids"]
    rows = [[str(k), "yes" if acc[k] else "no", fmt(float(r["snr"][k]), 3), fmt(float(r["r_spatial"][k]), 3),
             f"{r['g'][k, 0]:.3f}, {r['g'][k, 1]:.3f}", f"{cent[k, 0]:.1f}, {cent[k, 1]:.1f}"] for k in range(K)]
    table = Table(columns=["component", "accepted", "SNR", "r spatial", "AR g1, g2", "centre (y, x)"], rows=rows,
                  title="Per-component metrics", collapsed=K > 25,
                  caption=f"Accepted: SNR ≥ {attrs.get('params', {}).get('min_snr', '?')} and r spatial ≥ "
                          f"{attrs.get('params', {}).get('min_r_spatial', '?')}.")
    return {"facts": facts, "notes": notes, "figures": figures, "tables": [table]}


def _decode_p_methods(r: dict) -> str:
    """How decode.json's p-values were made: 'refit' (labels permuted, classifier refitted) and/or
    'folds' (held-out labels permuted against fixed predictions), per classifier."""
    m = sorted({v.get("p_method") for k, v in (r.get("classifiers") or {}).items()
                if isinstance(v, dict) and v.get("p_method")})
    return " / ".join({"refit": "refit test", "folds": "fold test"}.get(x, x) for x in m) or "none"


@section("decode", "Decoding", scope="session", order=65)
def decode_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Cross-validated decoding of the stimulus (decode.json): accuracy per classifier vs the dummy."""
    path = s.dir / "decode.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    p = r.get("params", {})
    facts = [
        ("trials decoded", f"{fmt(r.get('n_trials'))} of {fmt(r.get('n_trials_total'))}, {len(r.get('classes', []))} "
                           f"stimulus classes (chance {fmt(r.get('chance', float('nan')), 2)})"),
        ("neurons", f"{fmt(r.get('n_neurons'))} ({p.get('traces', '?')}"
                    f"{', accepted only' if p.get('accepted_only') else ''})"),
        ("response", f"mean over {p.get('window_s')} s minus {p.get('baseline_s')} s around onset"),
        ("spontaneous activity", f"z-scored over {fmt(r.get('spontaneous_frames'))} frames"
                                 f"{'' if p.get('zscore', True) else ' (off)'}; {fmt(r.get('pcs_removed', 0))} PCs removed"),
        ("cross-validation", f"{r.get('cv') or str(p.get('folds')) + '-fold'}, {p.get('n_permutations')} label "
                             f"permutations (p-value: {_decode_p_methods(r)})"),
    ]
    notes = []
    if r.get("dropped_classes"):
        notes.append(f"Classes with fewer trials than folds were left out: "
                     f"{', '.join(f'{k} ({v})' for k, v in r['dropped_classes'].items())}.")
    if r.get("status") != "ok":
        notes.append(f"Not decoded: {r.get('note', r.get('status'))}.")
        return {"facts": facts, "notes": notes}
    rows = []
    for name, c in r["classifiers"].items():
        ci = c.get("ci95", [float("nan")] * 2)
        rows.append([name, fmt(c["accuracy"], 3), f"{fmt(ci[0], 3)}–{fmt(ci[1], 3)}",
                     f"{fmt(c['fold_accuracy_mean'], 3)} ± {fmt(c['fold_accuracy_std'], 3)}",
                     fmt(c["p_value"], 3) if "p_value" in c else "–"])
    table = Table(columns=["classifier", "accuracy", "95% CI (Wilson)", "per fold mean ± sd", "permutation p"],
                  rows=rows, numeric=[False, True, False, False, True],
                  caption="Accuracy of the pooled out-of-fold predictions; dummy = most frequent class. p: share of "
                          "label permutations scoring at least the real accuracy (smallest possible 1/(n+1)).")
    figures = [f for f in [figure_from_png(s.plots / "decode" / "confusion.png", "Confusion matrices",
                                           "Rows: stimulus given; columns: predicted; each row normalised.", wide=True)]
               if f is not None]
    return {"facts": facts, "notes": notes, "tables": [table], "figures": figures}


@section("virtual_stain", "Virtual staining", scope="run", order=55)
def virtual_stain_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Held-out metrics of every virtual_stain dataset, example maps and the fraction scatter."""
    root = ctx.results / "virtual_stain"
    runs = sorted(root.glob("*/metrics.json")) if root.is_dir() else []
    if not runs:
        return None
    rows, figures = [], []
    for path in runs:
        m = json.loads(path.read_text())
        t = m["test"]
        rows.append([m.get("dataset", path.parent.name), fmt(m["n_train_images"]), fmt(m["n_test_images"]),
                     fmt(t["n_blocks"]), fmt(t["f1"], 3), fmt(t["accuracy"], 3), fmt(t["precision"], 3),
                     fmt(t["recall"], 3), fmt(t["roc_auc"], 3), fmt(m["pearson_r"], 3)])
        plots = path.parent / "plots"
        for name, title, caption, wide in (
            ("examples.png", "Label-free, fluorescence, virtual stain",
             "Held-out images: the label-free input, the fluorescence with the blocks labelled positive (cyan), and "
             "the CNN's probability per block rebuilt to full size.", True),
            ("fractions.png", "Positive fraction per image",
             "Each held-out image's positive-block fraction from the fluorescence against the mean predicted "
             "probability (Pearson r).", False),
            ("roc.png", "ROC of held-out blocks", "", False),
        ):
            f = figure_from_png(plots / name, f"{m.get('dataset', path.parent.name)}: {title}", caption, wide=wide)
            if f is not None:
                figures.append(f)
    table = Table(columns=["dataset", "train images", "test images", "test blocks", "F1", "accuracy", "precision",
                           "recall", "ROC AUC", "fraction r"], rows=rows,
                  caption="Block classification of held-out images at probability 0.5; fraction r: Pearson correlation "
                          "of the estimated and fluorescence-measured positive fraction over the held-out images. "
                          "The original study: F1 0.77, accuracy 0.96, AUC 0.98, r 0.99.")
    return {"tables": [table], "figures": figures}
# --------------------------------------------------------------------------------------------
# classify / gradcam / compare (docs/classify.md)
# --------------------------------------------------------------------------------------------


def _offdiag(z: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(len(z), 1)
    return z[i, j]


def _classifier_metrics(ctx: ReportContext) -> list[dict[str, Any]]:
    """Every results/classifier/{group}/metrics.json (cached)."""
    def load() -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((ctx.results / "classifier").glob("*/metrics.json"))]

    return ctx.cached(("classifier_metrics",), load)


@section("classifier", "Stimulation classifier", scope="condition", order=50)
def classifier_section(ctx: ReportContext, condition: str, sessions: list[SessionInfo]) -> dict[str, Any] | None:
    """Held-out accuracy per session and per target, train vs test, and the confusion matrix."""
    names = {s.name for s in sessions}
    found = [(m, s, v) for m in _classifier_metrics(ctx) for s, v in m["sessions"].items() if s in names]
    if not found:
        return None
    rows, per_target, figures = [], [], []
    for m, s, v in found:
        t = v["test"]
        rows.append([Link(s, f"#s-{s}"), m["group"], fmt(v["n_trials"]), fmt(t["n_stimulated_frames"]),
                     fmt(t["accuracy"]), fmt(t.get("target_accuracy")), fmt(t.get("missed_as_none")),
                     fmt(v["train_accuracy"]), fmt(t["none_accuracy"])])
        per_target += [[s, tid, fmt(x["frames"]), fmt(x["accuracy"])] for tid, x in t["per_target"].items()]
        conf = np.asarray(t["confusion"]["counts"], float)
        frac = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(4.6, 4.6))
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(t["confusion"]["columns"])), t["confusion"]["columns"], rotation=90, fontsize=6)
        ax.set_yticks(range(len(t["confusion"]["rows"])), t["confusion"]["rows"], fontsize=6)
        ax.set_xlabel("top output")
        ax.set_ylabel("stimulated pattern")
        fig.tight_layout()
        figures.append(figure_from_mpl(fig, f"Confusion, {s}", "Held-out frames: fraction of each stimulated "
                                       "pattern's frames whose top output is each target (or none)."))
    acc = [v["test"]["accuracy"] for _, _, v in found if v["test"]["accuracy"] is not None]
    facts = [("rule", "a frame is correct when the top output is one of its stimulated targets (held-out "
                      "trial blocks, cross-fitted)"),
             ("mean held-out accuracy", fmt(float(np.mean(acc))) if acc else "–")]
    models = {m["group"]: m for m, _, _ in found}  # one entry per model, not per session
    for g, m in models.items():
        c = m.get("conditions", {}).get(condition) or {}
        if c.get("test_accuracy") is not None:
            facts.append((f"held-out accuracy, model {g}", _accuracy_text(c["test_accuracy"], c.get("test_accuracy_ci"))
                          + (f" over {c['n_trials']} trials" if c.get("n_trials") else "")
                          + " (trial-clustered bootstrap; not evidence about connectivity)"))
    facts += [("warning", w) for m in models.values() for w in m.get("warnings", [])]
    tables = [Table(columns=["session", "model", "trials", "stimulated frames", "test accuracy",
                             "which target (top target output)", "stimulated but top is none", "train accuracy",
                             "none-frame accuracy"], rows=rows),
              Table(columns=["session", "target", "frames", "test accuracy"], rows=per_target,
                    title="Accuracy per target", collapsed=True)]
    return {"facts": facts, "tables": tables, "figures": figures}


@section("zncc", "Grad-CAM ZNCC matrices", scope="condition", order=60)
def zncc_section(ctx: ReportContext, condition: str, sessions: list[SessionInfo]) -> dict[str, Any] | None:
    """The pattern x pattern ZNCC matrices of the condition's sessions side by side."""
    have = [s for s in sessions if (s.dir / "gradcam.zarr").is_dir()]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(4.2 * len(have), 4.2), squeeze=False)
    rows = []
    for ax, s in zip(axes[0], have, strict=True):
        g = open_group(s.dir / "gradcam.zarr")
        z = np.asarray(g["zncc"][:])
        names = list(g.attrs["patterns"])
        ax.imshow(z, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(s.name, fontsize=9)
        off = _offdiag(z)
        row = [Link(s.name, "#" + s.anchor), fmt(len(z)), fmt(float(np.nansum(off))), fmt(float(np.nanmean(off)))]
        if "trace_corr" in g:
            row.append(fmt(float(np.nanmean(_offdiag(np.asarray(g["trace_corr"][:]))))))
        else:
            row.append("–")
        rows.append(row)
    fig.tight_layout()
    return {"figures": [figure_from_mpl(fig, "ZNCC between the Grad-CAM maps of every pattern pair",
                                        "Rows and columns: stimulation patterns (targets, pairs); colour: ZNCC of "
                                        "their held-out Grad-CAM maps.", wide=True)],
            "tables": [Table(columns=["session", "patterns", "summed off-diagonal ZNCC", "mean off-diagonal ZNCC",
                                      "mean trace r (cnmf)"], rows=rows)]}


@section("gradcam", "Grad-CAM maps", scope="session", order=60)
def gradcam_section(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    d = s.plots / "gradcam"
    store = s.dir / "gradcam.zarr"
    attrs = dict(open_group(store).attrs) if store.is_dir() else {}
    method = attrs.get("method", "gradcam")
    score = {"vs_none": "each target's logit minus the none logit", "logit": "the targets' logits"}.get(
        attrs.get("score", "vs_none"), str(attrs.get("score")))
    sign = ("HiResCAM's sign follows the network's evidence pixel by pixel" if method == "hirescam" else
            "Grad-CAM's sign is not guaranteed: on short sessions such as the demo's it changes with the "
            "classifier's training seed (docs/classify.md; gradcam.method: hirescam gives signed evidence)")
    caption = (f"Mean map (gradcam.method: {method}) over the held-out trials of each stimulation pattern on the "
               "session's mean image, upsampled: ReLU-ed (top rows) and signed (bottom rows, red positive, blue "
               f"negative), of {score} (gradcam.score, layer {attrs.get('layer', '?')}). {sign}; ZNCC does not "
               "depend on a common sign.")
    figs = [f for f in (
        figure_from_png(d / "maps.png", f"Maps per pattern ({method})", caption, wide=True),
        figure_from_png(d / "zncc.png", "ZNCC matrix", "ZNCC between the layer-resolution maps of every pair of "
                        "patterns."),
    ) if f is not None]
    if not figs:
        return None
    return {"figures": figs}


def _ci_text(ci: Sequence[float | None] | None, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"{ci[0]:.{digits}f} – {ci[1]:.{digits}f}"


def _accuracy_text(acc: float | None, ci: Sequence[float | None] | None) -> str:
    """``0.908 (95% CI 0.881 – 0.931)``, or the accuracy alone without a CI."""
    return fmt(acc) + (f" (95% CI {_ci_text(ci)})" if ci and ci[0] is not None else "")


_SOURCE_NAMES = {"gradcam": "Grad-CAM (ensemble)", "stim_maps": "stimulus-triggered average (model-free)",
                 "gradcam_shuffled": "Grad-CAM, shuffled-label classifier"}


@section("compare", "Condition comparison", scope="run", order=50)
def compare_section(ctx: ReportContext) -> dict[str, Any] | None:
    """The animal-level comparison of every source (results/compare/*_vs_*.json) and its controls."""
    files = sorted((ctx.results / "compare").glob("*_vs_*.json"))
    if not files:
        return None
    rows, animal_rows, figures, facts = [], [], [], []
    for f in files:
        r = json.loads(f.read_text())
        a, b = r["a"], r["b"]
        head = r["sources"][r["primary"]]
        test = r["test"]
        p_text = fmt(r["p"], 4) if r["p"] is not None else test.get("message", "no test")
        profile = r.get("profile", "default")
        facts.append(("analysis profile", f"{profile}: {PROFILE_LABELS.get(profile, profile)}"
                      + ("" if profile == "default" else " (classify.profile: a sensitivity analysis that "
                                                         "reproduces the seed study, not the default analysis)")))
        facts += [(f"{a} vs {b}", f"effect ({b} - {a}, {r['summary']} ZNCC over {r['statistic']} pattern pairs) "
                                  f"{r['effect']:+.3f}, 95% CI {_ci_text(r['effect_ci'])}, {test['name']}: {p_text}"),
                  ("unit of replication", f"the animal (n = {r['n_animals']}); trials are resampled within animals "
                                          "for the CI only"),
                  ("controls", "; ".join(f"{_SOURCE_NAMES.get(k, k)}: {v['effect']:+.3f}"
                                          f"{'' if v['same_sign_as_primary'] else ' (opposite sign)'}"
                                          for k, v in r["controls"].items()) or "none")]
        ens = head.get("ensemble") or {}
        if ens.get("member_sd") is not None:
            facts.append(("classifier ensemble", f"{ens['members']} members; member effects "
                          f"{min(ens['member_effects']):+.3f} to {max(ens['member_effects']):+.3f} (SD "
                          f"{ens['member_sd']:.3f}; SD of the ensemble mean ~{ens['ensemble_sd']:.3f}); "
                          f"{ens['members_agreeing_in_sign']} of {ens['members']} agree in sign"))
        for inter in (head.get("groups") or {}).get("interactions", []):
            g0, g1 = inter["groups"]
            facts.append((f"group x condition ({g1} vs {g0})", f"{inter['interaction']:+.3f}, "
                          + (f"p = {inter['p']:.4f}" if inter["p"] is not None else inter.get("message", "no test"))))
        facts += [("warning", w) for w in r.get("warnings", [])]
        for name, src in r["sources"].items():
            t = src["test"]
            rows.append([f"{a} vs {b}", _SOURCE_NAMES.get(name, name), fmt(src["n_animals"]),
                         fmt(src["conditions"][a]["statistic"]), fmt(src["conditions"][b]["statistic"]),
                         f"{src['effect']:+.3f}", _ci_text(src["effect_ci"]),
                         fmt(t["p"], 4) if t["p"] is not None else "too few animals",
                         " / ".join(f"{src['effect_by_set'][k]:+.3f}" for k in ("singles", "pairs"))])
            for x in src["animals"]:
                animal_rows.append([f"{a} vs {b}", _SOURCE_NAMES.get(name, name), x["animal"], x.get("group") or "–",
                                    fmt(x["n_patterns"]), fmt(x[a]), fmt(x[b]), f"{x['effect']:+.3f}",
                                    fmt(x.get("session_difference_p"), 3)])
        seed = {c: (r.get("conditions") or {}).get(c, {}).get("seed_study_sum") for c in (a, b)}
        if all(seed.values()):
            facts.append(("seed study's statistic (summed off-diagonal ZNCC, all pattern pairs; not the headline "
                          "test)", "; ".join(f"{c} {fmt(v['mean'])} (mean over animals; "
                                             + ", ".join(f"{an} {fmt(x)}" for an, x in v["per_animal"].items()) + ")"
                                             for c, v in seed.items())))
        acc = r.get("classifier_accuracy") or {}
        if any(acc.values()):
            facts.append(("classifier accuracy (not evidence about connectivity)",
                          "; ".join(f"{c} {_accuracy_text(v['accuracy'], v.get('ci'))}" for c, v in acc.items() if v)
                          + ". " + r.get("classifier_accuracy_note", "")))
        fig = figure_from_png(f.with_suffix(".png"), f"{a} vs {b}",
                              "Top: the per-animal effect of every source with its mean and hierarchical-bootstrap "
                              "CI. Below: the primary source's ZNCC matrices of the first animals.", wide=True)
        if fig is not None:
            figures.append(fig)
    return {"facts": facts,
            "tables": [Table(columns=["comparison", "maps", "animals", "statistic (a)", "statistic (b)", "effect",
                                      "95% CI", "p (sign-flip over animals)", "effect singles / pairs"], rows=rows),
                       Table(columns=["comparison", "maps", "animal", "group", "patterns", "a", "b", "effect",
                                      "session-difference p (diagnostic, trials)"], rows=animal_rows,
                             title="Per animal", collapsed=True)],
            "figures": figures}
