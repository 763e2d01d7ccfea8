"""Population decoding: which stimulus a trial was, from the neurons' responses.

As the 10,000-neuron visual-stimulus study did it, from a session's traces (``dff``, ``C`` or
``C_raw`` of cnmf.zarr; N neurons x T frames) and its stim log (``frame,targets``) or stimulus
table (``frame,stimulus[,stop]``, one row per onset; rows named ``spontaneous`` with a ``stop``
mark spontaneous epochs):

1. Trials: a stim log's runs of consecutive frames with the same non-empty ``targets`` (label =
   the sorted target ids, e.g. ``"2;5"``); a stimulus table's rows (onset frame, label).
2. Spontaneous activity: the table's spontaneous epochs, a separate recording of the same neurons
   (:func:`decode`'s ``spontaneous``), or the gaps between trials; in every case only frames at
   least ``spont_guard_s`` after the end of each trial (its stimulus and response window: the
   calcium tail) and before the next trial's baseline. Each neuron is z-scored by it, and its
   top-k principal components (k = ``remove_spontaneous_pcs``, 32 in the study; at most one per 10
   neurons and per 50 spontaneous frames) are projected out.
3. Response matrix R (trials x neurons): mean over the window ``window_s`` after onset minus the
   mean over the baseline ``baseline_s``. z-scoring and the projection are linear, so they are
   applied to R (the spontaneous mean cancels in window - baseline) and the traces are never
   copied: 10,000 neurons x 10,000 frames of float32 stay 0.4 GB.
4. Label-independent folds (``blocks``: contiguous runs of trials in time; ``shuffled``). Per
   fold the responses are standardised by the training trials (label-free: shared by every
   classifier and permutation); the tree ensembles first keep the ``tree_neurons`` most selective
   neurons of the training trials (ANOVA F, part of the estimator). Every classifier (logistic
   regression, random forest, histogram gradient boosting, AdaBoost; scikit-learn) and
   ``DummyClassifier(most_frequent)`` is scored by the accuracy of the pooled out-of-fold
   predictions (Wilson 95% interval), per fold, and a confusion matrix. No "best" classifier is
   picked after the fact; ``nested_selection`` picks one per outer fold by an inner
   cross-validation on the training trials only.
5. p-values. *fold test* (every classifier, free): within each fold the held-out labels are
   permuted against that fold's fixed predictions (exact given the training trials: nothing is
   refit) and the fold p-values are merged by Bonferroni (K x smallest). *refit test*
   (classifiers in ``refit_test``; more powerful): labels permuted ``n_permutations`` times and
   only the classifier refit per permutation and fold, p = (1 + #{permuted accuracy >= accuracy})
   / (1 + n_permutations). Small logistic regressions are refit for all permutations of a fold
   at once (:func:`logistic_batch`). Both tests are exact when the stimulus order is random.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calflow.errors import CalflowInputError
from calflow.io import atomic_output
from calflow.params import check_fields, from_section, invalid, param

log = logging.getLogger(__name__)

CLASSIFIERS = ("logistic", "random_forest", "hist_gradient_boosting", "adaboost")
TRACES = ("dff", "C", "C_raw")
CV_SCHEMES = ("blocks", "shuffled")
SPONTANEOUS = ("auto", "epochs", "gaps")
SPONT_LABEL = "spontaneous"   # stimulus-table rows with this name (and a stop) are spontaneous epochs
PC_NEURONS = 10               # at most one spontaneous PC removed per 10 neurons ...
PC_FRAMES = 50                # ... and per 50 spontaneous frames
FOLD_TEST_DRAWS = 9999        # label permutations per fold of the fold test (smallest fold p 1e-4)
LOGISTIC_C = 1.0              # inverse L2 strength of logistic regression (scikit-learn's default)
BATCH_LOGISTIC = 1_000_000    # trials x neurons x classes up to which logistic refits are solved together
SD_FLOOR = 0.1                # z-scoring: spontaneous sd below this fraction of the neurons' median sd is raised to it
_GUARD_FIX = "give seconds >= 0 (at least 3 decay times of the indicator, e.g. 2 for GCaMP6f, 5 for GCaMP6s)"


@dataclass
class DecodeParams:
    """The ``decode`` config section (times in seconds relative to stimulus onset)."""

    traces: str = param("dff", choices=TRACES)  # of cnmf.zarr
    accepted_only: bool = True               # only components with accepted == True
    window_s: list[float] = param(factory=lambda: [0.0, 0.5])
    baseline_s: list[float] = param(factory=lambda: [-0.5, 0.0])
    spontaneous: str = param("auto", choices=SPONTANEOUS)  # epochs (the stimulus table's) | gaps (between trials)
    spont_guard_s: float = param(2.0, ge=0, fix=_GUARD_FIX)  # s after each trial before frames count as spontaneous
    zscore: bool = True                      # z-score each neuron by its spontaneous activity (before the PCs)
    remove_spontaneous_pcs: int = param(32, ge=0)  # k top spontaneous PCs projected out (capped; 0 = off)
    tree_neurons: int = param(64, ge=0)      # tree ensembles see the most selective neurons (ANOVA F; 0 = all)
    classifiers: list[str] = param(factory=lambda: list(CLASSIFIERS), choices=CLASSIFIERS, min_items=1)
    cv: str = param("blocks", choices=CV_SCHEMES)  # blocks (contiguous trials) | shuffled
    folds: int = param(5, ge=2)
    n_permutations: int = param(100, ge=0)   # label permutations of the refit test (0 = fold test only)
    refit_test: list[str] = param(factory=list, choices=CLASSIFIERS)
    nested_selection: bool = False           # also score a classifier chosen by inner cross-validation
    n_estimators: int = param(100, ge=1)     # random forest trees
    max_iter: int = param(30, ge=1)          # hist_gradient_boosting iterations
    adaboost_estimators: int = param(50, ge=1)  # AdaBoost rounds (depth-1 trees)
    seed: int = param(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "decode")
        for key in ("window_s", "baseline_s"):
            v = getattr(self, key)
            if len(v) != 2 or not v[0] < v[1]:
                raise invalid("decode", key, v, "must be [start, stop] with start < stop",
                              "give [start, stop] in seconds relative to onset with start < stop")
            setattr(self, key, [float(x) for x in v])
        if not math.isfinite(self.spont_guard_s):
            raise invalid("decode", "spont_guard_s", self.spont_guard_s, "must be finite", _GUARD_FIX)
        self.spont_guard_s = float(self.spont_guard_s)
        self.classifiers, self.refit_test = list(self.classifiers), list(self.refit_test)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DecodeParams | None) -> DecodeParams:
        return from_section(cls, "decode", config)


@dataclass
class Trials:
    """Stimulus trials in frame units, and spontaneous epochs (a stimulus schedule; the classifier's
    trials with their cross-fitting folds are :class:`calflow.stimulation.TrialFolds`).

    ``onset`` (n,) first frame, ``stop`` (n,) one past the last stimulated frame, ``label`` (n,) str;
    ``spont`` (E, 2) int64 ``[start, stop)`` frames of spontaneous epochs (none: shape (0, 2)).
    """

    onset: np.ndarray
    stop: np.ndarray
    label: np.ndarray
    spont: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def __len__(self) -> int:
        return int(self.onset.size)


# --------------------------------------------------------------------------------------------
# trials
# --------------------------------------------------------------------------------------------


def _norm_targets(text: str) -> str:
    ids = sorted({int(t) for t in str(text).replace(" ", "").split(";") if t != ""})
    return ";".join(map(str, ids))


def _frame_column(df: pd.DataFrame, col: str, path: Path, optional: bool = False) -> np.ndarray:
    """Non-negative integer column (``-1`` where an optional cell is empty)."""
    text = df[col].str.strip()
    empty = (text == "").to_numpy()
    values = pd.to_numeric(text.where(~empty, "-1" if optional else ""), errors="coerce")
    badrow = (values.isna() | ((values < 0) & ~empty) | (values % 1 != 0)).to_numpy()
    if badrow.any():
        i = int(badrow.nonzero()[0][0])
        raise CalflowInputError(f"row {i + 2}, field {col!r}: {df[col].iloc[i]!r} is not a non-negative integer",
                                file=path, fix="give the movie frame (0 = the first) as a whole number")
    return values.to_numpy(np.int64)


def read_trials(path: str | Path) -> Trials:
    """Trials of a stim log (``frame,targets``) or a stimulus table (``frame,stimulus[,stop]``).

    In a table, ``stop`` (optional, one past the stimulus' last frame) sets a trial's end; rows
    whose stimulus is ``spontaneous`` are spontaneous epochs ``[frame, stop)`` (stop required).
    """
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
    frames = _frame_column(df, "frame", path)
    if "stimulus" in df.columns:
        labels = df["stimulus"].str.strip().to_numpy(str)
        if (labels == "").any():
            i = int((labels == "").nonzero()[0][0])
            raise CalflowInputError(f"row {i + 2}, field 'stimulus' is empty", file=path,
                                    fix="name the stimulus shown at every onset row")
        stops = _frame_column(df, "stop", path, optional=True) if "stop" in df.columns else np.full(frames.size, -1)
        is_spont = labels == SPONT_LABEL
        wrong = (stops >= 0) & (stops <= frames) | (is_spont & (stops < 0))
        if wrong.any():
            i = int(wrong.nonzero()[0][0])
            raise CalflowInputError(f"row {i + 2}, field 'stop': {'missing' if stops[i] < 0 else int(stops[i])} "
                                    f"(frame {int(frames[i])})", file=path,
                                    fix="give stop > frame (one past the last frame); a 'spontaneous' epoch needs one")
        stops = np.where(stops < 0, frames + 1, stops)
        order = np.argsort(frames, kind="stable")
        trial = order[~is_spont[order]]
        spont = np.stack([frames[order][is_spont[order]], stops[order][is_spont[order]]], axis=1).astype(np.int64)
        return Trials(frames[trial], stops[trial], labels[trial], spont.reshape(-1, 2))
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
# responses and spontaneous activity
# --------------------------------------------------------------------------------------------


def _frames(span_s: list[float], fps: float) -> tuple[int, int]:
    """[start, stop) in frames relative to onset of a span in seconds (at least one frame)."""
    start = int(round(span_s[0] * fps))
    return start, max(int(round(span_s[1] * fps)), start + 1)


def spontaneous_frames(n_frames: int, trials: Trials, fps: float, p: DecodeParams) -> np.ndarray:
    """(T,) bool: frames that count as spontaneous activity.

    Never a frame from a trial's baseline start to ``spont_guard_s`` after its end (the later of
    its stimulus' last frame and its response window); with ``spontaneous`` = ``epochs`` (or
    ``auto`` and the table has epochs) only frames of the spontaneous epochs, else every other frame.
    """
    (w0, w1), (b0, b1) = _frames(p.window_s, fps), _frames(p.baseline_s, fps)
    guard = int(math.ceil(p.spont_guard_s * fps - 1e-9))
    if p.spontaneous == "epochs" and not len(trials.spont):
        raise CalflowInputError("decode.spontaneous is 'epochs' but the stimulus table has no spontaneous epochs",
                                file="config", fix=f"add rows frame,{SPONT_LABEL},stop to the stimulus table or use "
                                                   "decode.spontaneous: auto")
    if len(trials.spont) and p.spontaneous != "gaps":
        free = np.zeros(n_frames, bool)
        for a, b in trials.spont:
            free[max(a, 0): b] = True
    else:
        free = np.ones(n_frames, bool)
    for on, st in zip(trials.onset, trials.stop, strict=True):
        free[max(on + min(w0, b0, 0), 0): max(st, on + max(w1, b1)) + guard] = False
    return free


def response_matrix(traces: np.ndarray, trials: Trials, fps: float, p: DecodeParams,
                    block_frames: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(trials inside, neurons) float64 mean(window) - mean(baseline), and the (trials,) inside mask.

    ``traces`` (N, T) of any float dtype is read in blocks of ``block_frames`` frames (transposed
    copies of N x block) so that memory stays O(N x block) beyond the result.
    """
    n, t = traces.shape
    (w0, w1), (b0, b1) = _frames(p.window_s, fps), _frames(p.baseline_s, fps)
    lo, hi = trials.onset + min(w0, b0), trials.onset + max(w1, b1)
    inside = (lo >= 0) & (hi <= t)
    idx = np.flatnonzero(inside)
    idx = idx[np.argsort(lo[idx], kind="stable")]
    row = np.empty(trials.onset.size, np.int64)
    row[np.flatnonzero(inside)] = np.arange(idx.size)
    resp = np.empty((idx.size, n))
    i = 0
    while i < idx.size:
        start = int(lo[idx[i]])
        j = i + 1
        while j < idx.size and hi[idx[j]] - start <= block_frames:
            j += 1
        seg = np.ascontiguousarray(traces[:, start: int(hi[idx[i:j]].max())].T, dtype=np.float64)  # (frames, N)
        for k in idx[i:j]:
            on = int(trials.onset[k]) - start
            resp[row[k]] = seg[on + w0: on + w1].mean(axis=0) - seg[on + b0: on + b1].mean(axis=0)
        i = j
    return resp, inside


@dataclass
class Cleaning:
    """Spontaneous-activity noise removal: R -> (R / scale) (I - V Vᵀ).

    ``scale`` (N,) spontaneous standard deviation (1 without z-scoring); ``pcs`` (N, k) orthonormal
    neuron-space directions of the top-k spontaneous PCs; ``info`` what was done (for the JSON).
    """

    scale: np.ndarray
    pcs: np.ndarray
    info: dict[str, Any]

    def apply(self, resp: np.ndarray) -> np.ndarray:
        """(trials, N) responses -> cleaned responses (float64)."""
        r = resp / self.scale
        if self.pcs.shape[1]:
            r -= (r @ self.pcs) @ self.pcs.T
        return r


def spontaneous_cleaning(spont: np.ndarray, p: DecodeParams) -> Cleaning:
    """z-scoring and top-k PCs from spontaneous activity ``spont`` (N neurons, Ts frames).

    k = min(``remove_spontaneous_pcs``, N // 10, Ts // 50): in a few dozen neurons the top PCs are
    single cells, and from a few dozen frames they are the cells that happened to fire.
    """
    n, ts = spont.shape
    k = min(p.remove_spontaneous_pcs, n // PC_NEURONS, ts // PC_FRAMES)
    info: dict[str, Any] = {"spontaneous_frames": int(ts), "pcs_requested": p.remove_spontaneous_pcs,
                            "pcs_removed": int(k), "spontaneous_variance_removed": 0.0}
    if k < p.remove_spontaneous_pcs:
        info["pcs_cap"] = f"at most one per {PC_NEURONS} neurons ({n}) and per {PC_FRAMES} spontaneous frames ({ts})"
    scale = np.ones(n)
    if ts >= 2 and (p.zscore or k):
        mu = spont.mean(axis=1, dtype=np.float64)
        sd = spont.std(axis=1, dtype=np.float64)
        if p.zscore:  # floor: a neuron silent in the spontaneous frames would be scaled up ~1e7 (and leak into all)
            scale = np.maximum(sd, SD_FLOOR * np.median(sd)) if np.median(sd) > 1e-12 else np.where(sd > 1e-12, sd, 1.0)
    elif p.zscore:
        info["note_zscore"] = "fewer than 2 spontaneous frames: not z-scored (the classifiers standardise anyway)"
    pcs = np.zeros((n, 0))
    if k > 0:
        work = np.float64 if spont.dtype == np.float64 else np.float32
        s = np.array(spont, dtype=work)                    # (N, Ts) copy, centred and scaled in place
        s -= mu[:, None].astype(work)
        s /= scale[:, None].astype(work)
        total = float(np.einsum("ij,ij->", s, s, dtype=np.float64))
        small = min(n, ts)
        if small <= 4000:  # exact: top eigenvectors of the smaller Gram matrix (ARPACK when it is large)
            gram = ((s @ s.T) if n <= ts else (s.T @ s)).astype(np.float64)
            if small <= 500:
                lam, vec = np.linalg.eigh(gram)
            else:
                from scipy.sparse.linalg import eigsh

                lam, vec = eigsh(gram, k=k, which="LA", v0=np.ones(small))
            top = np.argsort(lam)[::-1][:k]
            lam, vec = lam[top], vec[:, top]
            if n <= ts:
                pcs = vec
            else:  # frame-space eigenvectors -> neuron-space directions
                pcs, _ = np.linalg.qr((s @ vec.astype(work)).astype(np.float64))
        else:
            from sklearn.utils.extmath import randomized_svd

            pcs, sv, _ = randomized_svd(s, k, n_oversamples=20, n_iter=7, random_state=p.seed)
            pcs, lam = pcs.astype(np.float64), sv.astype(np.float64) ** 2
        info["spontaneous_variance_removed"] = float(np.clip(lam.sum() / max(total, 1e-300), 0, 1))
    return Cleaning(scale, pcs, info)


# --------------------------------------------------------------------------------------------
# classifiers
# --------------------------------------------------------------------------------------------


def make_classifier(name: str, p: DecodeParams, n_neurons: int = 0):
    """A scikit-learn estimator by name (``dummy`` = DummyClassifier(most_frequent)) for features
    standardised per fold. The tree ensembles get the ``p.tree_neurons`` neurons with the largest
    ANOVA F of the training trials first (SelectKBest, part of the estimator: refit with it) when
    ``n_neurons`` is larger: a split costs O(neurons), boosting 10,000 neurons takes minutes."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import AdaBoostClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if name == "dummy":
        return DummyClassifier(strategy="most_frequent")
    if name == "logistic":
        return LogisticRegression(C=LOGISTIC_C, max_iter=1000)
    if name == "random_forest":
        est = RandomForestClassifier(n_estimators=p.n_estimators, random_state=p.seed, n_jobs=1)
    elif name == "hist_gradient_boosting":
        est = HistGradientBoostingClassifier(max_iter=p.max_iter, random_state=p.seed, early_stopping=False,
                                             min_samples_leaf=5)  # the default 20 cannot split ~50 trials
    elif name == "adaboost":
        extra = {"algorithm": "SAMME"} if "algorithm" in inspect.signature(AdaBoostClassifier).parameters else {}
        est = AdaBoostClassifier(n_estimators=p.adaboost_estimators, random_state=p.seed, **extra)
    else:
        raise CalflowInputError(f"unknown classifier {name!r}", file="config", fix=f"use {', '.join(CLASSIFIERS)}")
    if p.tree_neurons and n_neurons > p.tree_neurons:
        from sklearn.feature_selection import SelectKBest, f_classif
        from sklearn.pipeline import make_pipeline

        return make_pipeline(SelectKBest(f_classif, k=p.tree_neurons), est)
    return est


def logistic_batch(z_train: np.ndarray, y_train: np.ndarray, n_classes: int, z_test: np.ndarray, *,
                   c: float = LOGISTIC_C, tol: float = 1e-4, max_iter: int = 1000,
                   max_params: int = 500_000) -> np.ndarray:
    """Predicted classes (B, m) of B L2 multinomial logistic regressions that share their features.

    ``z_train`` (n, F), ``y_train`` (B, n) int class ids in [0, n_classes), ``z_test`` (m, F).
    Problem b minimises sum_i -log softmax(z_i W_b + c_b)[y_bi] + |W_b|² / (2 c), scikit-learn's
    LogisticRegression objective (lbfgs, intercept not penalised, stopping at a projected gradient
    of ``tol`` per trial); classes missing from a problem's labels are never predicted (as
    scikit-learn). The problems are solved together (one L-BFGS on their sum, in chunks of at most
    ``max_params`` parameters): the permutation test's refits in a few matrix products.
    """
    from scipy.optimize import minimize

    n, nf = z_train.shape
    b_all, k = y_train.shape[0], int(n_classes)
    out = np.empty((b_all, z_test.shape[0]), np.int64)
    chunk = max(1, max_params // ((nf + 1) * k))
    for lo in range(0, b_all, chunk):
        y = y_train[lo: lo + chunk]
        b = y.shape[0]
        onehot = np.zeros((n, b, k))
        onehot[np.arange(n)[:, None], np.arange(b)[None, :], y.T] = 1.0
        absent = np.where(onehot.any(axis=0), 0.0, -1e300)        # (b, k): never predict an unseen class
        res = minimize(_logistic_loss_grad, np.zeros((nf + 1) * b * k), args=(z_train, onehot, absent, c), jac=True,
                       method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": tol * n, "ftol": 64 * np.finfo(float).eps, "maxls": 50})
        if not res.success:
            log.warning("decode: logistic regression did not converge (%s)", res.message)
        w = res.x[: nf * b * k].reshape(nf, b, k)
        c0 = res.x[nf * b * k:].reshape(b, k) + absent
        out[lo: lo + b] = np.argmax(np.einsum("mf,fbk->bmk", z_test, w) + c0[:, None, :], axis=2)
    return out


def _logistic_loss_grad(theta: np.ndarray, z: np.ndarray, onehot: np.ndarray, absent: np.ndarray,
                        c: float) -> tuple[float, np.ndarray]:
    """Summed loss and gradient of :func:`logistic_batch`'s problems; theta = [W (F, B*K), bias (B, K)]."""
    n, b, k = onehot.shape
    nw = z.shape[1] * b * k
    w, c0 = theta[:nw].reshape(-1, b * k), theta[nw:].reshape(b, k)
    logits = (z @ w).reshape(n, b, k) + c0 + absent
    logits -= logits.max(axis=2, keepdims=True)
    e = np.exp(logits)
    s = e.sum(axis=2, keepdims=True)
    loss = float(np.log(s).sum() - (onehot * logits).sum()) + 0.5 / c * float(np.dot(w.ravel(), w.ravel()))
    g = e / s - onehot
    return loss, np.concatenate([(z.T @ g.reshape(n, b * k) + w / c).ravel(), g.sum(axis=0).ravel()])


def fit_predict(name: str, z_train: np.ndarray, y_train: np.ndarray, n_classes: int, z_test: np.ndarray,
                p: DecodeParams) -> np.ndarray:
    """Predictions (B, m) of classifier ``name`` fit once per label row of ``y_train`` (B, n).

    Logistic regression on small problems (trials x neurons x classes <= ``BATCH_LOGISTIC``, where
    Python overhead dominates a fit) is :func:`logistic_batch`, else scikit-learn's, one fit per row.
    """
    import warnings

    y_train = np.atleast_2d(y_train)
    if name == "logistic" and z_train.size * n_classes <= BATCH_LOGISTIC:
        return logistic_batch(z_train, y_train, n_classes, z_test)
    out = np.empty((y_train.shape[0], z_test.shape[0]), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # f_classif: a neuron constant over the training trials
        for b, y in enumerate(y_train):
            out[b] = make_classifier(name, p, z_train.shape[1]).fit(z_train, y).predict(z_test)
    return out


def wilson_ci(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion ``correct / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    ph = correct / n
    den = 1 + z * z / n
    mid = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def make_folds(n: int, p: DecodeParams) -> list[np.ndarray]:
    """Test indices of ``p.folds`` label-independent folds of n trials in time order."""
    from sklearn.model_selection import KFold

    shuffled = p.cv == "shuffled"
    cv = KFold(n_splits=p.folds, shuffle=shuffled, random_state=p.seed if shuffled else None)
    return [np.sort(te) for _, te in cv.split(np.zeros((n, 1)))]


def fold_features(resp: np.ndarray, train: np.ndarray, test: np.ndarray,
                  stats: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) rows of ``resp`` (trials, neurons) standardised by the training trials' mean and sd.

    ``train``/``test`` are index arrays; label-free: the same for every classifier and permutation;
    ``stats`` = (mean, sd) (neurons,) when already known.
    """
    if stats is None:
        sd = resp[train].std(axis=0)
        stats = (resp[train].mean(axis=0), np.where(sd > 1e-12, sd, 1.0))
    mu, sd = stats
    ztr, zte = resp[train], resp[test]  # fancy indexing: copies, standardised in place (2 x 122 MB at 10,000 neurons)
    ztr -= mu
    ztr /= sd
    zte -= mu
    zte /= sd
    return ztr, zte


def fold_test(preds: dict[str, list[np.ndarray]], y_test: list[np.ndarray], seed: int,
              draws: int = FOLD_TEST_DRAWS) -> dict[str, tuple[float, list[float]]]:
    """Per classifier: the Bonferroni-merged p of the folds' held-out accuracy, and the fold p-values.

    ``preds[name][k]`` are fold k's held-out predictions, ``y_test[k]`` its labels. Fold k:
    p_k = (1 + #{draws: matches(pred_k, permuted y_k) >= matches(pred_k, y_k)}) / (1 + draws), exact
    given the fold's training trials (the predictions depend on them only); the draws are shared
    by the classifiers. Merged: min(1, K x min_k p_k), valid however the folds depend on each other.
    """
    ps: dict[str, list[float]] = {name: [] for name in preds}
    for k, yt in enumerate(y_test):
        perm = np.random.default_rng([seed, k]).permuted(np.broadcast_to(yt.astype(np.int16), (draws, yt.size)), axis=1)
        for name, pr in preds.items():
            null = (perm == pr[k]).sum(axis=1)
            ps[name].append(float((1 + (null >= (pr[k] == yt).sum()).sum()) / (1 + draws)))
    return {name: (min(1.0, len(v) * min(v)), v) for name, v in ps.items()}


def _summary(pred: np.ndarray, y: np.ndarray, folds: list[np.ndarray], n_classes: int) -> dict[str, Any]:
    """Accuracy (pooled, Wilson CI, per fold) and confusion of out-of-fold predictions ``pred`` (n,)."""
    correct = int((pred == y).sum())
    fold_acc = [float((pred[te] == y[te]).mean()) for te in folds]
    conf = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(conf, (y, pred), 1)
    return {"accuracy": correct / y.size, "ci95": list(wilson_ci(correct, y.size)),
            "fold_accuracy_mean": float(np.mean(fold_acc)), "fold_accuracy_std": float(np.std(fold_acc)),
            "confusion": conf.tolist()}


def _run(tasks: list, n_jobs: int) -> list:
    """Run zero-argument callables, in ``n_jobs`` threads (scikit-learn and BLAS release the GIL)."""
    from threadpoolctl import threadpool_limits

    def one(task):
        with threadpool_limits(1):  # per thread (OpenMP's limit is): many small fits, no oversubscription
            return task()

    if n_jobs <= 1 or len(tasks) <= 1:
        return [one(t) for t in tasks]
    with ThreadPoolExecutor(max_workers=n_jobs) as ex:
        return list(ex.map(one, tasks))


def score_classifiers(resp: np.ndarray, y: np.ndarray, n_classes: int, p: DecodeParams,
                      n_jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Cross-validated scores of ``dummy`` and every classifier of ``p`` (+ ``selected`` with nested
    selection) on responses ``resp`` (trials in time order, neurons) with int labels ``y`` (trials,)."""
    n = y.size
    folds = make_folds(n, p)
    trains = [np.setdiff1d(np.arange(n), te) for te in folds]
    stats = []
    for tr in trains:  # standardisation per fold; the (trials x neurons) features are made per job (memory)
        sd = resp[tr].std(axis=0)
        stats.append((resp[tr].mean(axis=0), np.where(sd > 1e-12, sd, 1.0)))
    n_perm = p.n_permutations if any(c in p.refit_test for c in p.classifiers) else 0
    perms = np.random.default_rng(p.seed).permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)
    y_all = np.vstack([y[None, :], y[perms]])                         # (1 + P, n): row 0 the real labels

    jobs: list[tuple[str, int, slice]] = []
    for name in ["dummy", *p.classifiers]:
        rows = y_all.shape[0] if name in p.refit_test else 1
        batched = name == "logistic" and resp.size * n_classes <= BATCH_LOGISTIC  # all rows in one solve
        step = rows if batched else max(1, -(-rows // (4 * max(n_jobs, 1))))
        jobs += [(name, k, slice(lo, min(lo + step, rows))) for k in range(len(folds)) for lo in range(0, rows, step)]

    def job(name: str, k: int, rows: slice):
        tr = trains[k]
        ztr, zte = fold_features(resp, tr, folds[k], stats[k])
        t0 = time.perf_counter()
        return fit_predict(name, ztr, y_all[rows][:, tr], n_classes, zte, p), time.perf_counter() - t0

    # threads pay off only for fits bigger than the demo's (80 trials x 20 neurons: Python overhead, GIL)
    n_jobs = n_jobs if resp.size >= 50_000 else 1
    done = _run([lambda j=j: job(*j) for j in jobs], n_jobs)
    preds: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for (name, k, rows), (pr, dt) in zip(jobs, done, strict=True):
        if name not in preds:
            preds[name] = np.empty((y_all.shape[0] if name in p.refit_test else 1, n), np.int64)
        preds[name][rows, folds[k]] = pr
        seconds[name] = seconds.get(name, 0.0) + dt
    if p.nested_selection:
        preds["selected"], seconds["selected"], choice = _nested_selection(resp, stats, trains, folds, y, n_classes,
                                                                           preds, p, n_jobs)
    tested = fold_test({name: [pr[0][te] for te in folds] for name, pr in preds.items() if name != "dummy"},
                       [y[te] for te in folds], p.seed)
    out: dict[str, dict[str, Any]] = {}
    for name, pr in preds.items():
        r = _summary(pr[0], y, folds, n_classes)
        if name != "dummy":
            r["fold_p_value"], r["fold_p_values"] = tested[name]
            r["p_value"], r["p_method"] = r["fold_p_value"], "folds"
        if name in p.refit_test and pr.shape[0] > 1:
            null = (pr[1:] == y_all[1:]).mean(axis=1)
            r.update(p_value=float((1 + (null >= r["accuracy"] - 1e-12).sum()) / (1 + null.size)), p_method="refit",
                     n_permutations=int(null.size), permutation_mean=float(null.mean()),
                     permutation_p95=float(np.quantile(null, 0.95)))
        if name == "selected":
            r["chosen"] = choice
        out[name] = r
        log.info("decode: %s accuracy %.3f (p %s, %s) in %.2f s of fits", name, r["accuracy"],
                 r.get("p_value", "-"), r.get("p_method", "-"), seconds[name])
    return out


def _nested_selection(resp, stats, trains, folds, y, n_classes, preds, p, n_jobs):
    """Per outer fold, the classifier with the best inner cross-validated accuracy on the training
    trials only (ties: the first in ``p.classifiers``); its outer predictions are reused."""
    inner = [make_folds(tr.size, DecodeParams(folds=p.folds, cv=p.cv, seed=p.seed)) for tr in trains]
    jobs = [(name, k, j) for k in range(len(folds)) for j in range(len(inner[k])) for name in p.classifiers]

    def job(name: str, k: int, j: int) -> int:
        tr, te = trains[k], inner[k][j]
        ztr = fold_features(resp, tr, folds[k][:0], stats[k])[0]
        itr = np.setdiff1d(np.arange(tr.size), te)
        return int((fit_predict(name, ztr[itr], y[tr][itr], n_classes, ztr[te], p)[0] == y[tr][te]).sum())

    t0 = time.perf_counter()
    correct = dict(zip(jobs, _run([lambda j=j: job(*j) for j in jobs], n_jobs), strict=True))
    pred = np.empty((1, y.size), np.int64)
    choice = []
    for k, te in enumerate(folds):
        best = max(p.classifiers, key=lambda c: (sum(correct[(c, k, j)] for j in range(len(inner[k]))),
                                                 -p.classifiers.index(c)))
        choice.append(best)
        pred[0, te] = preds[best][0, te]
    return pred, time.perf_counter() - t0, choice


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


def _all_finite(x: np.ndarray, rows: int = 512) -> bool:
    return all(np.isfinite(x[i: i + rows]).all() for i in range(0, x.shape[0], rows))


def decode(traces: np.ndarray, trials: Trials, fps: float, params: DecodeParams | dict | None = None, *,
           spontaneous: np.ndarray | None = None, decay_s: float | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """Decode trial labels from ``traces`` (N neurons, T frames; float32 is not copied) at ``fps`` Hz.

    ``spontaneous`` (N, Ts): a separate recording of the same neurons to take the spontaneous
    statistics from instead of frames of ``traces``; ``decay_s``: the indicator's decay time (s),
    only to warn when ``spont_guard_s`` is shorter than 3 of them. Returns the result dict:
    ``result["classifiers"][name]`` holds accuracy, ci95, fold mean/std, confusion (rows = true,
    columns = predicted, in ``result["classes"]`` order), p_value and p_method; ``"dummy"`` is the
    baseline. No neurons (N = 0) gives ``status: "no components"`` and no classifiers.
    """
    p = from_section(DecodeParams, "decode", params)
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise CalflowInputError(f"traces of shape {traces.shape}: need (neurons, frames)")
    result: dict[str, Any] = {"params": asdict(p), "fps": float(fps), "n_neurons": int(traces.shape[0]),
                              "n_frames": int(traces.shape[1]), "n_trials_total": len(trials)}
    if traces.shape[0] == 0:
        # a session CNMF found no (accepted) cells in is a result, not an error: the rest of the run goes on
        return {**result, "classifiers": {}, "status": "no components",
                "note": "cnmf.zarr has no accepted components (set decode.accepted_only false or loosen "
                        "the cnmf acceptance criteria)"}
    if not _all_finite(traces):
        raise CalflowInputError("traces hold NaN or infinite values", fix="check the cnmf stage's output")
    t0 = time.perf_counter()
    resp, inside = response_matrix(traces, trials, fps, p)
    order = np.argsort(trials.onset[inside], kind="stable")           # time order (folds are runs of trials)
    resp, labels = resp[order], trials.label[inside][order]
    classes, counts = np.unique(labels, return_counts=True)
    keep_cls = classes[counts >= p.folds]
    keep = np.isin(labels, keep_cls)
    result.update({
        "n_trials_outside_movie": int((~inside).sum()),
        "dropped_classes": {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < p.folds},
        "classes": [str(c) for c in keep_cls],
        "n_trials": int(keep.sum()),
        "cv": f"{p.cv} {p.folds}-fold",
    })
    if spontaneous is not None:
        spontaneous = np.asarray(spontaneous)
        if spontaneous.ndim != 2 or spontaneous.shape[0] != traces.shape[0] or not _all_finite(spontaneous):
            raise CalflowInputError(f"spontaneous recording of shape {spontaneous.shape}: need finite (neurons = "
                                    f"{traces.shape[0]}, frames)")
        spont, source = spontaneous, "recording"
    else:
        mask = spontaneous_frames(traces.shape[1], trials, fps, p)
        spont = traces[:, mask]
        source = "epochs" if len(trials.spont) and p.spontaneous != "gaps" else "gaps"
    cleaning = spontaneous_cleaning(spont, p)
    del spont
    result.update(spontaneous_source=source, spont_guard_s=p.spont_guard_s, **cleaning.info)
    notes = [v for k, v in cleaning.info.items() if k.startswith("note_")]
    if decay_s is not None and math.isfinite(decay_s):
        result["decay_s_median"] = float(decay_s)
        if source != "recording" and p.spont_guard_s < 3 * decay_s:
            notes.append(f"decode.spont_guard_s = {p.spont_guard_s:g} s is shorter than 3 decay times of the "
                         f"traces (3 x {decay_s:.2f} s): response tails may count as spontaneous activity")
            log.warning("decode: %s", notes[-1])
    if cleaning.info.get("pcs_cap"):
        log.info("decode: %d of %d spontaneous PCs removed (%s)", cleaning.info["pcs_removed"],
                 p.remove_spontaneous_pcs, cleaning.info["pcs_cap"])
    if notes:
        result["notes"] = notes
    log.info("decode: responses and spontaneous cleaning (%s, %d frames) in %.2f s", source,
             cleaning.info["spontaneous_frames"], time.perf_counter() - t0)
    if keep_cls.size < 2:
        result.update(status="too few trials", classifiers={},
                      note=f"fewer than 2 stimulus classes with >= {p.folds} trials (folds); nothing to decode")
        return result
    x = cleaning.apply(resp[keep])
    del resp
    y = np.searchsorted(keep_cls, labels[keep])
    log.info("decode: %d trials x %d neurons, %d classes, %s", *x.shape, keep_cls.size, result["cv"])
    result["tree_neurons_used"] = int(min(x.shape[1], p.tree_neurons or x.shape[1]))
    result["classifiers"] = score_classifiers(x, y, keep_cls.size, p, n_jobs)
    result["status"] = "ok"
    result["chance"] = 1.0 / keep_cls.size
    return result


# --------------------------------------------------------------------------------------------
# cnmf.zarr in, decode.json + figure out
# --------------------------------------------------------------------------------------------


def load_traces(store: str | Path, kind: str = "dff", accepted_only: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """(traces (K', T) in the stored dtype, fps, component indices) from a cnmf.zarr (the contract).

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
    x = np.asarray(g[kind][...])
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    fps = float(g.attrs.get("fps", 0) or 0)
    if fps <= 0:
        raise CalflowInputError("attribute fps missing or not positive", file=store, fix="rerun the cnmf stage")
    idx = np.arange(x.shape[0])
    if accepted_only and "accepted" in g:
        acc = np.asarray(g["accepted"][...], bool)
        if acc.shape != (x.shape[0],):
            raise CalflowInputError(f"accepted has shape {acc.shape}, {kind} {x.shape}", file=store,
                                    fix="rerun the cnmf stage")
        if not acc.all():
            idx = idx[acc]
            x = x[idx]
    if not _all_finite(x):
        raise CalflowInputError(f"{kind} holds NaN or infinite values", file=store, fix="rerun the cnmf stage")
    return x, fps, idx


def decay_time_s(store: str | Path, idx: np.ndarray, fps: float) -> float | None:
    """Median calcium decay time (s) of components ``idx`` from cnmf.zarr's AR coefficients ``g``
    (the larger root of z² = g1 z + g2); None without ``g`` or without a stable decay."""
    from calflow.io import open_group

    g = open_group(Path(store), mode="r")
    if "g" not in g or not len(idx):
        return None
    coef = np.asarray(g["g"][...], np.float64)
    coef = (coef[:, None] if coef.ndim == 1 else coef)[idx]
    g1, g2 = coef[:, 0], (coef[:, 1] if coef.shape[1] > 1 else np.zeros(len(idx)))
    root = (g1 + np.sqrt(np.maximum(g1 * g1 + 4 * g2, 0))) / 2
    ok = (root > 0) & (root < 1)
    return float(np.median(-1.0 / (fps * np.log(root[ok])))) if ok.any() else None


def confusion_figure(result: dict[str, Any], path: str | Path) -> Path | None:
    """PNG of the out-of-fold confusion matrices (rows: true stimulus; row-normalised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = [*result.get("params", {}).get("classifiers", []), "selected"]
    names = [n for n in wanted if n in result.get("classifiers", {})]
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
    if len(trials.spont) and trials.spont[:, 1].max() > traces.shape[1]:
        raise CalflowInputError(f"a spontaneous epoch ends at frame {int(trials.spont[:, 1].max())} but the traces "
                                f"have {traces.shape[1]} frames", file=stim_log,
                                fix="check the stop of the 'spontaneous' rows")
    result = decode(traces, trials, fps, p, decay_s=decay_time_s(cnmf_store, idx, fps), n_jobs=n_jobs)
    result.update(cnmf=str(cnmf_store), stim_log=str(stim_log), components=idx.tolist())
    with atomic_output(plot_dir) as tmp:
        tmp.mkdir(parents=True)
        confusion_figure(result, tmp / "confusion.png")
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result
