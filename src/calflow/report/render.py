"""Page assembly: the Jinja environment (templates in ``report/templates/``), building every
registered section (:func:`render_report`, per-session sections optionally in forked workers) and
writing the page (:func:`build_report`, the entry ``workflow/scripts/report.py`` calls)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from calflow import __version__
from calflow.io import atomic_output
from calflow.report.page import (
    Link,
    ReportContext,
    SessionInfo,
    _build,
    _plain,
    _sections,
    condition_anchor,
    fmt,
    log,
)

# Importing a module of calflow.report.sections imports them all (sections/__init__.py), so every
# section is registered before a page is built.
from calflow.report.sections.motion import motion_metrics

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"
SECTIONS_TEMPLATE = "sections.html.j2"


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
        from calflow.runner import forked_pool

        _FORKED = (ctx, macros)
        pool = forked_pool(min(workers, len(ctx.sessions)))
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
