"""Segmentation section: the segmenter's cells on the local-correlation image, F1 against the
annotated masks (``segment_eval.json``), and :func:`segmenter_source` (where the run's cells come
from, in words; also shown in the overview)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from calflow.errors import CalflowInputError
from calflow.report.page import (
    SEGMENTER_COLOUR,
    TRUTH_COLOUR,
    ReportContext,
    SessionInfo,
    _attrs_json,
    contour_overlay,
    figure_from_mpl,
    fmt,
    section,
)
from calflow.report.sections.motion import load_summary
from calflow.segment.footprints import read_labels
from calflow.segment.store import read_segment_eval, read_segmenter_metrics


def segmenter_source(ctx: ReportContext, attrs: dict[str, Any] | None = None) -> str | None:
    """Where the run's cells come from, in words: the segmenter trained in the run (fine-tuned or from
    scratch), a given file, the bundled generalist (segment.init: generalist, or no annotated session),
    or corr_pnr seeds."""
    if attrs is not None and attrs.get("method") == "corr_pnr":
        return "annotation-free correlation × peak-to-noise seeds of the corrected movie (segment.method: corr_pnr, no network)"
    path = ctx.results / "models" / "segmenter_metrics.json"
    if not path.is_file():
        return None
    m = read_segmenter_metrics(path)
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
    labels, attrs = read_labels(store)
    if labels is None:
        raise CalflowInputError("missing arrays ['labels']", file=store, fix="rerun the stage that writes it")
    attrs = _attrs_json(attrs)
    facts: list[tuple[str, str]] = [("cells found", fmt(int(attrs.get("n_components", labels.max()))))]
    source = segmenter_source(ctx, attrs)
    if source:
        facts.append(("found by", source))
    ev_path = s.dir / "segment_eval.json"
    truth = None
    if ev_path.is_file():
        ev = read_segment_eval(ev_path)
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
