"""Classifier sections (docs/classify.md): held-out accuracy per condition
(``results/classifier/*/metrics.json``), the Grad-CAM ZNCC matrices per condition and each
session's Grad-CAM maps (``gradcam.zarr`` and its plots)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from calflow.classify.store import read_classifier_metrics
from calflow.gradcam.similarity import offdiag
from calflow.gradcam.store import read_gradcam_arrays
from calflow.report.page import (
    Link,
    ReportContext,
    SessionInfo,
    Table,
    _accuracy_text,
    figure_from_mpl,
    figure_from_png,
    fmt,
    section,
)


def _classifier_metrics(ctx: ReportContext) -> list[dict[str, Any]]:
    """Every results/classifier/{group}/metrics.json (cached)."""
    def load() -> list[dict[str, Any]]:
        return [read_classifier_metrics(p) for p in sorted((ctx.results / "classifier").glob("*/metrics.json"))]

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
        attrs, arrays = read_gradcam_arrays(s.dir / "gradcam.zarr", ("zncc", "trace_corr"))
        z = arrays["zncc"]
        names = list(attrs["patterns"])
        ax.imshow(z, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(s.name, fontsize=9)
        off = offdiag(z)
        row = [Link(s.name, "#" + s.anchor), fmt(len(z)), fmt(float(np.nansum(off))), fmt(float(np.nanmean(off)))]
        if "trace_corr" in arrays:
            row.append(fmt(float(np.nanmean(offdiag(arrays["trace_corr"])))))
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
    attrs = read_gradcam_arrays(store)[0] if store.is_dir() else {}
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
