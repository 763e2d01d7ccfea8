"""Population decoding: which stimulus a trial was, from the neurons' responses.

From a session's traces (``dff`` or ``C`` of cnmf.zarr, neurons x frames) and its stim log
(``frame,targets``, one row per frame or per stimulated frame) or a stimulus table
(``frame,stimulus``, one row per onset):

1. Trials: a stim log's runs of consecutive frames with the same non-empty ``targets`` (label =
   the sorted target ids, e.g. ``"2;5"``); a stimulus table's rows (onset frame, label).
2. Spontaneous frames: every frame outside ``[onset + baseline_s[0], stop + window_s[1]]`` of all
   trials. Each neuron is z-scored by its mean and standard deviation over those frames; with
   ``remove_spontaneous_pcs = k > 0`` the top-k principal components of the z-scored spontaneous
   activity (neuron-space directions) are projected out of all frames (the noise removal of the
   10,000-neuron visual-decoding study, k = 32 there).
3. Response matrix R (trials x neurons): mean over the window ``window_s`` after onset minus the
   mean over the baseline ``baseline_s`` (seconds relative to onset, ``[start, stop)``).
4. Classes with fewer trials than ``folds`` are dropped (stratified k-fold needs one per fold).
   Each scikit-learn classifier (logistic regression, random forest, histogram gradient boosting)
   and ``DummyClassifier(most_frequent)`` is scored by stratified k-fold cross-validation:
   accuracy of the pooled out-of-fold predictions with a Wilson 95% interval, the mean and
   standard deviation over folds, and a permutation p-value (scikit-learn's
   ``permutation_test_score``: labels shuffled ``n_permutations`` times, p = (1 + #{perm >=
   score}) / (1 + n_permutations), which is valid at any level: false positives <= alpha).

Nothing here is hand-written that a library offers: the classifiers, the folds and the
permutation test are scikit-learn's; only trial extraction and the spontaneous-PC projection
(a few lines of numpy) are calflow's.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.params import from_section

log = logging.getLogger(__name__)

CLASSIFIERS = ("logistic", "random_forest", "hist_gradient_boosting")
TRACES = ("dff", "C", "C_raw")


@dataclass
class DecodeParams:
    """The ``decode`` config section (times in seconds relative to stimulus onset)."""

    traces: str = "dff"                      # dff | C | C_raw of cnmf.zarr
    accepted_only: bool = True               # only components with accepted == True
    window_s: list[float] = field(default_factory=lambda: [0.0, 0.5])
    baseline_s: list[float] = field(default_factory=lambda: [-0.5, 0.0])
    zscore: bool = True                      # z-score each neuron by its spontaneous frames
    remove_spontaneous_pcs: int = 0          # k top PCs of spontaneous activity projected out (0 = off)
    classifiers: list[str] = field(default_factory=lambda: list(CLASSIFIERS))
    folds: int = 5
    n_permutations: int = 100
    n_estimators: int = 100                  # trees of the random forest
    max_iter: int = 100                      # boosting iterations of hist_gradient_boosting
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(key: str, fix: str) -> CalflowInputError:
            return CalflowInputError(f"decode.{key}: {getattr(self, key)!r} is not valid", file="config", fix=fix)

        if self.traces not in TRACES:
            raise bad("traces", f"use one of {', '.join(TRACES)}")
        for key in ("window_s", "baseline_s"):
            v = list(getattr(self, key))
            if len(v) != 2 or not all(isinstance(x, int | float) for x in v) or not v[0] < v[1]:
                raise bad(key, "give [start, stop] in seconds relative to onset with start < stop")
            setattr(self, key, [float(x) for x in v])
        unknown = [c for c in self.classifiers if c not in CLASSIFIERS]
        if unknown or not self.classifiers:
            raise bad("classifiers", f"list one or more of {', '.join(CLASSIFIERS)}")
        if self.folds < 2:
            raise bad("folds", "use 2 or more folds")
        if self.n_permutations < 1:
            raise bad("n_permutations", "use 1 or more permutations (99+ for p-values below 0.01)")
        if self.remove_spontaneous_pcs < 0:
            raise bad("remove_spontaneous_pcs", "use 0 (off) or a positive number of components")


@dataclass
class Trials:
    """Stimulus trials in frame units: onset (first frame), stop (one past the last), label."""

    onset: np.ndarray   # (n,) int64
    stop: np.ndarray    # (n,) int64
    label: np.ndarray   # (n,) str

    def __len__(self) -> int:
        return int(self.onset.size)


# --------------------------------------------------------------------------------------------
# trials
# --------------------------------------------------------------------------------------------


def _norm_targets(text: str) -> str:
    ids = sorted({int(t) for t in str(text).replace(" ", "").split(";") if t != ""})
    return ";".join(map(str, ids))


def read_trials(path: str | Path) -> Trials:
    """Trials of a stim log (``frame,targets``) or a stimulus table (``frame,stimulus``)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as err:
        raise CalflowInputError("stim log not found", file=path, fix="check the sessions sheet's stim_log") from err
    except Exception as err:  # noqa: BLE001 - pandas parser errors
        raise CalflowInputError(f"cannot parse the stim log ({err})", file=path) from err
    df.columns = [c.strip() for c in df.columns]
    if "frame" not in df.columns or not ({"targets", "stimulus"} & set(df.columns)):
        raise CalflowInputError(f"columns {', '.join(df.columns)}: need frame and targets (stim log) or frame and "
                                "stimulus (stimulus table)", file=path, fix="write a header frame,targets or frame,stimulus")
    frames = pd.to_numeric(df["frame"].str.strip(), errors="coerce")
    if frames.isna().any() or (frames < 0).any() or (frames % 1 != 0).any():
        i = int((frames.isna() | (frames < 0) | (frames % 1 != 0)).to_numpy().nonzero()[0][0])
        raise CalflowInputError(f"row {i + 2}, field 'frame': {df['frame'].iloc[i]!r} is not a non-negative integer",
                                file=path)
    frames = frames.to_numpy(np.int64)
    if "stimulus" in df.columns:
        labels = df["stimulus"].str.strip().to_numpy(str)
        if (labels == "").any():
            i = int((labels == "").nonzero()[0][0])
            raise CalflowInputError(f"row {i + 2}, field 'stimulus' is empty", file=path,
                                    fix="name the stimulus shown at every onset row")
        order = np.argsort(frames, kind="stable")
        return Trials(frames[order], frames[order] + 1, labels[order])
    try:
        targets = np.array([_norm_targets(t) for t in df["targets"]], dtype=object)
    except ValueError as err:
        raise CalflowInputError(f"field 'targets' holds a non-integer id ({err})", file=path,
                                fix="write ';'-separated integer target ids, empty for none") from err
    order = np.argsort(frames, kind="stable")
    frames, targets = frames[order], targets[order]
    onsets, stops, labels = [], [], []
    for f, t in zip(frames, targets, strict=True):
        if t == "":
            continue
        if onsets and labels[-1] == t and stops[-1] == f:
            stops[-1] = f + 1
        else:
            onsets.append(f)
            stops.append(f + 1)
            labels.append(t)
    return Trials(np.array(onsets, np.int64), np.array(stops, np.int64), np.array(labels, dtype=str))


def trials_from_truth(truth: Any) -> Trials:
    """Trials of a :class:`calflow.simulate.GroundTruth` (labels as a stim log would give them)."""
    labels = [";".join(str(j) for j in sorted(truth.patterns[p]) if j >= 0) for p in truth.trial_pattern]
    return Trials(truth.trial_start.astype(np.int64), truth.trial_stop.astype(np.int64), np.array(labels, dtype=str))


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------


def _frames(span_s: list[float], fps: float) -> tuple[int, int]:
    """[start, stop) in frames relative to onset of a span in seconds (at least one frame)."""
    start = int(round(span_s[0] * fps))
    return start, max(int(round(span_s[1] * fps)), start + 1)


def spontaneous_frames(n_frames: int, trials: Trials, fps: float, p: DecodeParams) -> np.ndarray:
    """(T,) bool: frames outside every trial's baseline-to-window span."""
    (w0, w1), (b0, b1) = _frames(p.window_s, fps), _frames(p.baseline_s, fps)
    free = np.ones(n_frames, bool)
    for on, st in zip(trials.onset, trials.stop, strict=True):
        free[max(on + min(w0, b0, 0), 0): max(st, on + max(w1, b1))] = False
    return free


def clean_traces(traces: np.ndarray, spont: np.ndarray, p: DecodeParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Z-score each neuron by its spontaneous frames and project out the top-k spontaneous PCs.

    ``traces`` (N neurons, T frames); returns float64 (N, T) and facts (k used, variance removed).
    """
    x = np.asarray(traces, np.float64)
    info: dict[str, Any] = {"spontaneous_frames": int(spont.sum()), "pcs_removed": 0}
    need = max(p.remove_spontaneous_pcs + 1, 3) if (p.zscore or p.remove_spontaneous_pcs) else 0
    if need and spont.sum() < need:
        raise CalflowInputError(f"only {int(spont.sum())} frames without stimulation (need {need}) to z-score by or "
                                "take principal components of", fix="shorten decode.window_s/baseline_s, set "
                                "decode.zscore false and decode.remove_spontaneous_pcs 0, or record spontaneous activity")
    if p.zscore:
        mu = x[:, spont].mean(axis=1, keepdims=True)
        sd = x[:, spont].std(axis=1, keepdims=True)
        x = (x - mu) / np.where(sd > 1e-12, sd, 1.0)
    k = min(p.remove_spontaneous_pcs, x.shape[0] - 1, int(spont.sum()) - 1)
    if k > 0:
        s = x[:, spont]
        s = s - s.mean(axis=1, keepdims=True)
        u, sv, _ = np.linalg.svd(s, full_matrices=False)  # u: (N, r) neuron-space directions
        v = u[:, :k]
        x = x - v @ (v.T @ x)
        info.update(pcs_removed=int(k), spontaneous_variance_removed=float((sv[:k] ** 2).sum() / max((sv**2).sum(), 1e-300)))
    if p.remove_spontaneous_pcs and k < p.remove_spontaneous_pcs:
        log.warning("decode: remove_spontaneous_pcs=%d capped at %d (neurons %d, spontaneous frames %d)",
                    p.remove_spontaneous_pcs, max(k, 0), x.shape[0], int(spont.sum()))
    return x, info


def response_matrix(traces: np.ndarray, trials: Trials, fps: float, p: DecodeParams) -> tuple[np.ndarray, np.ndarray]:
    """(trials, neurons) mean(window) - mean(baseline); and the (trials,) mask of trials inside the movie."""
    n, t = traces.shape
    w0, w1 = _frames(p.window_s, fps)
    b0, b1 = _frames(p.baseline_s, fps)
    ok = (trials.onset + min(w0, b0) >= 0) & (trials.onset + max(w1, b1) <= t)
    resp = np.zeros((int(ok.sum()), n))
    for i, on in enumerate(trials.onset[ok]):
        resp[i] = traces[:, on + w0: on + w1].mean(axis=1) - traces[:, on + b0: on + b1].mean(axis=1)
    return resp, ok


# --------------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------------


def make_classifier(name: str, p: DecodeParams, n_jobs: int = 1):
    """A scikit-learn estimator by name (``dummy`` = DummyClassifier(most_frequent))."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "dummy":
        return DummyClassifier(strategy="most_frequent")
    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=p.n_estimators, random_state=p.seed, n_jobs=n_jobs)
    if name == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=p.max_iter, random_state=p.seed, early_stopping=False,
                                              min_samples_leaf=5)  # the default 20 cannot split ~50 trials
    raise CalflowInputError(f"unknown classifier {name!r}", file="config", fix=f"use {', '.join(CLASSIFIERS)}")


def wilson_ci(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``correct / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    ph = correct / n
    den = 1 + z * z / n
    mid = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def score_classifier(name: str, X: np.ndarray, y: np.ndarray, p: DecodeParams, n_jobs: int = 1,
                     permutations: bool = True) -> dict[str, Any]:
    """Stratified k-fold accuracy (pooled, Wilson CI, per fold), confusion matrix, permutation p."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, permutation_test_score

    cv = StratifiedKFold(n_splits=p.folds, shuffle=True, random_state=p.seed)
    est = make_classifier(name, p, n_jobs)
    pred = cross_val_predict(est, X, y, cv=cv)
    correct = int((pred == y).sum())
    fold_acc = [float((pred[te] == y[te]).mean()) for _, te in cv.split(X, y)]
    out: dict[str, Any] = {
        "accuracy": correct / len(y),
        "ci95": list(wilson_ci(correct, len(y))),
        "fold_accuracy_mean": float(np.mean(fold_acc)),
        "fold_accuracy_std": float(np.std(fold_acc)),
        "confusion": confusion_matrix(y, pred, labels=np.unique(y)).tolist(),
    }
    if permutations:
        score, perm, pval = permutation_test_score(make_classifier(name, p, n_jobs), X, y, cv=cv,
                                                   n_permutations=p.n_permutations, random_state=p.seed,
                                                   scoring="accuracy")
        out.update(p_value=float(pval), permutation_mean=float(np.mean(perm)),
                   permutation_p95=float(np.quantile(perm, 0.95)))
    return out


def decode(traces: np.ndarray, trials: Trials, fps: float, params: DecodeParams | dict | None = None, *,
           n_jobs: int = 1) -> dict[str, Any]:
    """Decode trial labels from ``traces`` (N neurons, T frames) at ``fps`` Hz; returns the result dict.

    ``result["classifiers"][name]`` holds accuracy, ci95, fold mean/std, confusion (rows = true,
    columns = predicted, in ``result["classes"]`` order) and p_value; ``"dummy"`` is the baseline.
    No neurons (N = 0) gives ``status: "no components"`` and no classifiers.
    """
    p = from_section(DecodeParams, "decode", params)
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise CalflowInputError(f"traces of shape {traces.shape}: need (neurons, frames)")
    if traces.shape[0] == 0:
        # a session CNMF found no (accepted) cells in is a result, not an error: the rest of the run goes on
        return {"params": asdict(p), "fps": float(fps), "n_neurons": 0, "n_frames": int(traces.shape[1]),
                "n_trials_total": len(trials), "classifiers": {}, "status": "no components",
                "note": "cnmf.zarr has no accepted components (set decode.accepted_only false or loosen "
                        "the cnmf acceptance criteria)"}
    if not np.isfinite(traces).all():
        raise CalflowInputError("traces hold NaN or infinite values", fix="check the cnmf stage's output")
    spont = spontaneous_frames(traces.shape[1], trials, fps, p)
    clean, info = clean_traces(traces, spont, p)
    resp, inside = response_matrix(clean, trials, fps, p)
    labels = trials.label[inside]
    classes, counts = np.unique(labels, return_counts=True)
    keep_cls = classes[counts >= p.folds]
    keep = np.isin(labels, keep_cls)
    result: dict[str, Any] = {
        "params": asdict(p),
        "fps": float(fps),
        "n_neurons": int(traces.shape[0]),
        "n_frames": int(traces.shape[1]),
        "n_trials_total": len(trials),
        "n_trials_outside_movie": int((~inside).sum()),
        "dropped_classes": {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < p.folds},
        "classes": [str(c) for c in keep_cls],
        "n_trials": int(keep.sum()),
        **info,
    }
    if keep_cls.size < 2:
        result.update(status="too few trials",
                      note=f"fewer than 2 stimulus classes with >= {p.folds} trials (folds); nothing to decode")
        result["classifiers"] = {}
        return result
    X, y = resp[keep], labels[keep]
    result["classifiers"] = {"dummy": score_classifier("dummy", X, y, p, n_jobs, permutations=False)}
    for name in p.classifiers:
        log.info("decode: %s on %d trials x %d neurons, %d classes", name, *X.shape, keep_cls.size)
        result["classifiers"][name] = score_classifier(name, X, y, p, n_jobs)
    result["status"] = "ok"
    result["chance"] = 1.0 / keep_cls.size
    best = max(p.classifiers, key=lambda c: result["classifiers"][c]["accuracy"])
    result["best"] = best
    return result


# --------------------------------------------------------------------------------------------
# cnmf.zarr in, decode.json + figure out
# --------------------------------------------------------------------------------------------


def load_traces(store: str | Path, kind: str = "dff", accepted_only: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """(traces (K', T) float64, fps, component indices) from a cnmf.zarr (the agreed contract).

    K' is 0 when the session has no (accepted) components; :func:`decode_session` records that.
    """
    from calflow.io import open_group

    store = Path(store)
    try:
        g = open_group(store, mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises several kinds for a missing/bad store
        raise CalflowInputError(f"cannot open the CNMF store ({err})", file=store, fix="rerun the cnmf stage") from err
    if kind not in g:
        raise CalflowInputError(f"no array {kind!r} in the CNMF store", file=store,
                                fix=f"set decode.traces to one of {', '.join(k for k in TRACES if k in g) or 'dff, C'}")
    x = np.asarray(g[kind][...], np.float64)
    fps = float(g.attrs.get("fps", 0) or 0)
    if fps <= 0:
        raise CalflowInputError("attribute fps missing or not positive", file=store, fix="rerun the cnmf stage")
    idx = np.arange(x.shape[0])
    if accepted_only and "accepted" in g:
        acc = np.asarray(g["accepted"][...], bool)
        if acc.shape != (x.shape[0],):
            raise CalflowInputError(f"accepted has shape {acc.shape}, {kind} {x.shape}", file=store,
                                    fix="rerun the cnmf stage")
        idx = idx[acc]
    if not np.isfinite(x[idx]).all():
        raise CalflowInputError(f"{kind} holds NaN or infinite values", file=store, fix="rerun the cnmf stage")
    return x[idx], fps, idx


def confusion_figure(result: dict[str, Any], path: str | Path) -> Path | None:
    """PNG of the out-of-fold confusion matrices (rows: true stimulus; row-normalised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result.get("params", {}).get("classifiers", []) if n in result.get("classifiers", {})]
    if not names:
        return None
    classes = result["classes"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.6, 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        cm = np.asarray(result["classifiers"][name]["confusion"], float)
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(cm, vmin=0, vmax=1, cmap="viridis")
        r = result["classifiers"][name]
        ax.set_title(f"{name}\nacc {r['accuracy']:.2f} (p={r.get('p_value', float('nan')):.3g})", fontsize=8)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
        ax.set_yticks(ticks, classes, fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("stimulus", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="fraction of trials")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def decode_session(cnmf_store: str | Path, stim_log: str | Path, out_json: str | Path, plot_dir: str | Path,
                   params: DecodeParams | dict | None = None, *, n_jobs: int = 1) -> dict[str, Any]:
    """Rule ``decode``: cnmf.zarr + stim log -> decode.json and plots/decode/confusion.png."""
    p = from_section(DecodeParams, "decode", params)
    trials = read_trials(stim_log)
    traces, fps, idx = load_traces(cnmf_store, p.traces, p.accepted_only)
    if len(trials) and trials.onset.max() >= traces.shape[1]:
        raise CalflowInputError(f"stimulus onset at frame {int(trials.onset.max())} but the traces have "
                                f"{traces.shape[1]} frames", file=stim_log, fix="check that the stim log belongs to the movie")
    result = decode(traces, trials, fps, p, n_jobs=n_jobs)
    result.update(cnmf=str(cnmf_store), stim_log=str(stim_log), components=idx.tolist())
    with atomic_output(plot_dir) as tmp:
        tmp.mkdir(parents=True)
        confusion_figure(result, tmp / "confusion.png")
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result
