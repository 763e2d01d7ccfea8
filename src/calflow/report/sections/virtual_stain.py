"""Virtual-staining section: held-out metrics of every dataset
(``results/virtual_stain/*/metrics.json``) with its example, fraction and ROC figures."""

from __future__ import annotations

from typing import Any

from calflow.report.page import ReportContext, Table, figure_from_png, fmt, section
from calflow.virtual_stain.store import read_virtual_stain_metrics


@section("virtual_stain", "Virtual staining", scope="run", order=55)
def virtual_stain_section(ctx: ReportContext) -> dict[str, Any] | None:
    """Held-out metrics of every virtual_stain dataset, example maps and the fraction scatter."""
    root = ctx.results / "virtual_stain"
    runs = sorted(root.glob("*/metrics.json")) if root.is_dir() else []
    if not runs:
        return None
    rows, figures = [], []
    for path in runs:
        m = read_virtual_stain_metrics(path)
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
