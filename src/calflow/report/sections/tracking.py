"""Tracking section: every tracked animal's cells across sessions (``results/tracking/{animal}/``: the
match summary from tracking.zarr, its overlay figure) and the cross-day statistics of the tracked cells
(``results/tracking/crossday_*_vs_*.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from calflow.report.page import ReportContext, Table, _ci_text, figure_from_png, fmt, section
from calflow.tracking.crossday import read_crossday
from calflow.tracking.store import read_tracking


@section("tracking", "Cells across sessions (tracking)", scope="run", order=52)
def tracking_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Per animal: cells per session, matched in every session, threshold, transforms; overlays; cross-day tests."""
    stores = sorted((ctx.results / "tracking").glob("*/tracking.zarr"))
    if not stores:
        return None
    rows, figures = [], []
    for store in stores:
        t = read_tracking(store)
        found = (t.members >= 0).sum(axis=1)
        rows.append([t.animal, ", ".join(t.sessions), t.reference, " / ".join(map(str, t.attrs["n_per_session"])),
                     fmt(t.n_cells), fmt(int((found == len(t.sessions)).sum())), fmt(int((found == 1).sum())),
                     f"{t.threshold:.2f} ({t.attrs['threshold_method']})",
                     fmt(float(np.nanmedian(t.scores))) if np.isfinite(t.scores).any() else "–",
                     ", ".join(t.attrs["transforms"])])
        fig = figure_from_png(store.parent / "tracking.png", t.animal,
                              "Each session resampled onto the reference with the union cells it contains: green "
                              "= found in every session, orange = in some, red = in one only. Right: match scores "
                              "of the candidate pairs and the threshold.", wide=True)
        if fig is not None:
            figures.append(fig)
    tables = [Table(columns=["animal", "sessions", "reference", "cells per session", "union cells",
                             "in every session", "in one session", "threshold", "median match score",
                             "transforms"], rows=rows)]
    facts = []
    for f in sorted((ctx.results / "tracking").glob("crossday_*_vs_*.json")):
        r = read_crossday(f)
        for name, st in r["statistics"].items():
            test = st["test"]
            p_text = fmt(test["p"], 4) if test.get("p") is not None else "no test"
            if test.get("p") is not None and test.get("smallest_possible_p", 0) > 0.05:
                p_text += f" (smallest possible p with {test['n']} animals: {test['smallest_possible_p']:.3f})"
            effect = f"{st['effect']:+.3f}" if st.get("effect") is not None else "–"
            facts.append((f"{r['a']} vs {r['b']}: {name}",
                          f"mean over animals of the per-animal mean per-cell change {effect}, 95% CI "
                          f"{_ci_text(st.get('ci'))}, sign-flip over {test['n']} animals p = {p_text}; cells per "
                          f"animal {', '.join(map(str, st['n_cells']))}"))
    return {"facts": facts, "tables": tables, "figures": figures}
