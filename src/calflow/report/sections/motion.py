"""Motion and summary sections: readers of ``motion.zarr`` / ``summary.zarr`` shared with other
sections (:func:`load_motion`, :func:`load_summary`, :func:`motion_metrics`, through the stages'
readers :func:`calflow.motion.store.read_shifts_header` / :func:`~calflow.summary.store.read_summary_images`), the motion and
summary-image sections, and the comparison with a simulated session's ground truth (section
``truth``, from rule ``evaluate_truth``'s ``truth_eval.json`` / ``.npz``: :func:`load_truth_eval`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from calflow.motion.store import read_shifts_header
from calflow.report.page import (
    TRUTH_COLOUR,
    Figure,
    ReportContext,
    SessionInfo,
    _attrs_json,
    _pct,
    _r_pair,
    _show_image,
    contour_overlay,
    figure_from_mpl,
    figure_from_png,
    fmt,
    section,
)
from calflow.summary.store import read_summary_images
from calflow.truth_eval import read_truth_eval


def load_motion(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """Small arrays and attrs of ``motion.zarr`` (never the movie itself); None if absent."""

    def make() -> dict[str, Any] | None:
        store = s.dir / "motion.zarr"
        if not store.is_dir():
            return None
        shifts, attrs, shape = read_shifts_header(store)
        out: dict[str, Any] = {"attrs": _attrs_json(attrs), **asdict(shifts)}
        if shape is not None:
            out["shape"] = shape
        return out

    return ctx.cached(("motion", s.name), make)


def load_summary(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    def make() -> dict[str, Any] | None:
        store = s.dir / "summary.zarr"
        if not store.is_dir():
            return None
        images, attrs = read_summary_images(store, ("mean", "local_corr", "pnr"))
        return {"attrs": _attrs_json(attrs), **images}

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


def load_truth_eval(ctx: ReportContext, s: SessionInfo) -> dict[str, Any] | None:
    """A simulated session's evaluation against its ground truth (rule ``evaluate_truth``:
    ``truth_eval.json`` + ``.npz``, :func:`calflow.truth_eval.read_truth_eval`); None if absent.

    ``motion`` holds :func:`calflow.truth_eval.motion_against_truth`'s numbers and series (or
    ``mismatch``), ``cnmf`` the CNMF accuracy, ``labels`` the true cells (world frame).
    """
    return ctx.cached(("truth_eval", s.name), lambda: read_truth_eval(s.dir / "truth_eval.json"))


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
    te = load_truth_eval(ctx, s)
    if te is None:
        return None
    tm = te["motion"]
    facts: list[tuple[str, str]] = [("ground truth", te["ground_truth"])]
    notes: list[str] = []
    figures: list[Figure] = []
    n_cells, n_targets, w_gain = te["n_cells"], te["n_targets"], te["w_gain"]
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
    labels = te["labels"]
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
