"""Run-wide sections: the overview table of every session (order 10), the run's provenance
(commit, versions, timings, sessions sheet, config; order 90) and each condition's sessions with
their motion numbers."""

from __future__ import annotations

import platform
import sys
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import yaml

from calflow import __version__
from calflow.report.page import (
    Figure,
    Link,
    ReportContext,
    SessionInfo,
    Table,
    _pct,
    _plain,
    _r_pair,
    condition_anchor,
    figure_from_mpl,
    fmt,
    section,
)
from calflow.report.provenance import git_commit, package_versions, rule_timings
from calflow.report.sections.motion import load_summary, load_truth_eval, motion_metrics
from calflow.report.sections.segment import segmenter_source


@section("overview", "Overview", scope="run", order=10)
def overview_section(ctx: ReportContext) -> dict[str, Any] | None:
    rows, metrics = [], []
    for s in ctx.sessions:
        mm = motion_metrics(ctx, s)
        te = load_truth_eval(ctx, s)
        tm = te["motion"] if te else None
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
