"""CNMF section: accepted footprints against the segmenter's, example traces with inferred
spikes, per-component metrics and, for simulated sessions, accuracy against the ground truth (from
rule ``evaluate_truth``'s ``truth_eval.json``)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from calflow.report.page import (
    CNMF_COLOUR,
    CONDITION_COLOURS,
    SEGMENTER_COLOUR,
    ReportContext,
    SessionInfo,
    Table,
    contour_overlay,
    figure_from_mpl,
    fmt,
    section,
)
from calflow.report.sections.motion import load_summary, load_truth_eval
from calflow.segment.footprints import read_labels


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
    te = load_truth_eval(ctx, s)  # rule evaluate_truth: calflow.cnmf.accuracy.session_accuracy
    a = te["cnmf"] if te else None
    if a:
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
            seg_labels = read_labels(seg_store)[0]
            if seg_labels is not None:
                contour_overlay(ax, seg_labels, SEGMENTER_COLOUR, label="segmenter")
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
