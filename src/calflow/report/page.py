"""The report's building blocks, shared by every section module.

:class:`Figure`, :class:`Link` and :class:`Table` (what a section hands the templates), number
formatting (:func:`fmt`), the PNG and matplotlib helpers (:func:`figure_from_png`,
:func:`figure_from_mpl`, :func:`contour_overlay`, the outline colours), what a section reads
(:class:`ReportContext`, one :class:`SessionInfo` per sheet row) and the section registry
(:func:`section`, ``SECTIONS``) that :mod:`calflow.report.render` builds the page from.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

log = logging.getLogger("calflow.report")

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



def _r_pair(before: Any, after: Any, digits: int = 3) -> str:
    return f"{fmt(before, digits)} → {fmt(after, digits)}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x * 100:+.1f} %"


def _ci_text(ci: Sequence[float | None] | None, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"{ci[0]:.{digits}f} – {ci[1]:.{digits}f}"


def _accuracy_text(acc: float | None, ci: Sequence[float | None] | None) -> str:
    """``0.908 (95% CI 0.881 – 0.931)``, or the accuracy alone without a CI."""
    return fmt(acc) + (f" (95% CI {_ci_text(ci)})" if ci and ci[0] is not None else "")


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
    """Register a section builder. It returns a dict for the template, or None when absent.

    Scopes: ``run`` (once per report, ``fn(ctx)``), ``condition`` (once per condition of the
    sessions sheet, ``fn(ctx, condition, sessions)``) and ``session`` (``fn(ctx, session)``).
    The dict goes to the macro ``section_<key>`` of ``templates/sections.html.j2``, or to the
    ``generic`` one (``facts``, ``notes``, ``figures``, ``tables``, ``code``).
    """
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
# Helpers of the section modules
# --------------------------------------------------------------------------------------------


def _attrs_json(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(attrs), default=str))


def _plain(obj: Any) -> Any:
    """Snakemake's config objects -> plain dicts/lists for YAML."""
    return json.loads(json.dumps(obj, default=str))
