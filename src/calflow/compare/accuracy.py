"""The classifier's held-out accuracy per condition, with a CI that resamples animals, then trials
within each session (a trial's frames are one cluster), from the classifiers' ``metrics.json``.
Reported beside the comparison; it is not evidence about connectivity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calflow.classify.store import read_classifier_metrics


def clustered_accuracy(units: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], *, n_bootstrap: int = 2000,
                       level: float = 0.95, seed: int = 0) -> dict:
    """Accuracy pooled over units (animals) with a percentile CI that resamples units, then trials.

    ``units``: per unit its strata (sessions), each ``(correct, frames)``: per trial the number of
    correctly classified and of all stimulated frames (a trial's frames are one cluster). The
    estimate is the pooled ``sum(correct) / sum(frames)``; a bootstrap replicate draws the units
    with replacement and, for every drawn unit, independently, the trials of each stratum with
    replacement. With one unit this is the trial-clustered bootstrap of one animal. Returns
    ``accuracy``, ``ci`` ([lo, hi], None without replicates), ``n_units``, ``n_trials``,
    ``n_frames``, ``n_bootstrap``, ``level``.
    """
    units = [[(np.asarray(c, np.float64), np.asarray(f, np.float64)) for c, f in u if len(f)] for u in units]
    units = [u for u in units if u]
    correct = sum(float(c.sum()) for u in units for c, _ in u)
    frames = sum(float(f.sum()) for u in units for _, f in u)
    out = {"accuracy": correct / frames if frames else None, "ci": None, "n_units": len(units),
           "n_trials": int(sum(len(f) for u in units for _, f in u)), "n_frames": int(frames),
           "n_bootstrap": int(n_bootstrap), "level": float(level)}
    if not frames or n_bootstrap < 1:
        return out
    rng = np.random.default_rng([int(seed), 21])
    sums = np.zeros((len(units), n_bootstrap, 2))  # per unit and replicate: resampled (correct, frames)
    for i, u in enumerate(units):
        for c, f in u:
            pick = rng.integers(0, len(f), (n_bootstrap, len(f)))
            sums[i, :, 0] += c[pick].sum(axis=1)
            sums[i, :, 1] += f[pick].sum(axis=1)
    n = len(units)
    tot = sums[rng.integers(0, n, (n_bootstrap, n)), rng.integers(0, n_bootstrap, (n_bootstrap, n))].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = tot[:, 0] / tot[:, 1]
    out["ci"] = [float(x) for x in np.nanquantile(acc, [(1 - level) / 2, (1 + level) / 2])]
    return out


ACCURACY_NOTE = ("held-out accuracy of the stimulation classifier on stimulated frames, pooled over animals; CI: "
                 "percentile bootstrap resampling animals, then trials within each session (a trial's frames are "
                 "one cluster). It says how well the network tells the stimulated targets apart, not how "
                 "connected they are: it is not evidence about connectivity")


def accuracy_by_condition(metrics_files: Sequence[str | Path], *, n_bootstrap: int = 2000, level: float = 0.95,
                          seed: int = 0) -> dict[str, dict]:
    """Held-out accuracy (stimulated frames) per condition over every model's metrics.json, with
    animals as the unit: the pooled accuracy and :func:`clustered_accuracy`'s CI (animals, i.e. the
    models' groups, then trials within each session). Per animal, the model's own trial-clustered
    CI (``conditions[c].test_accuracy_ci``). Sessions of metrics without per-trial counts (files from
    before them) count in the pooled accuracy only; the CI is then None."""
    units: dict[str, dict[str, list]] = {}  # condition -> group -> [(correct, frames) per session]
    num: dict[str, float] = {}
    den: dict[str, int] = {}
    complete: dict[str, bool] = {}
    per_animal: dict[str, dict] = {}
    for f in metrics_files:
        m = read_classifier_metrics(f)
        group = str(m.get("group", f))
        for s in m["sessions"].values():
            t, c = s["test"], s["condition"]
            if t["accuracy"] is None:
                continue
            num[c] = num.get(c, 0.0) + t["accuracy"] * t["n_stimulated_frames"]
            den[c] = den.get(c, 0) + t["n_stimulated_frames"]
            tt = s.get("test_trials")
            complete[c] = complete.get(c, True) and tt is not None
            if tt is not None:
                units.setdefault(c, {}).setdefault(group, []).append((tt["correct"], tt["stimulated_frames"]))
        for c, v in m.get("conditions", {}).items():
            per_animal.setdefault(c, {})[group] = {"accuracy": v.get("test_accuracy"),
                                                   "ci": v.get("test_accuracy_ci"), "n_trials": v.get("n_trials")}
    out = {}
    for c in num:
        if not den[c]:
            continue
        row = {"accuracy": num[c] / den[c], "n_frames": den[c], "ci": None, "level": level,
               "n_animals": len(per_animal.get(c, {})), "per_animal": per_animal.get(c, {})}
        if complete.get(c) and units.get(c):
            cl = clustered_accuracy(list(units[c].values()), n_bootstrap=n_bootstrap, level=level, seed=seed)
            row.update(ci=cl["ci"], n_trials=cl["n_trials"], n_animals=cl["n_units"],
                       ci_method="percentile bootstrap: animals with replacement, then trials within each session")
        out[c] = row
    return out
