"""The classifiers: scikit-learn estimators by name (:func:`make_classifier`), many small L2
logistic regressions solved together (:func:`logistic_batch`, the refit test's permutations), and
:func:`fit_predict`, which fits a classifier once per label row and predicts the held-out trials."""

from __future__ import annotations

import inspect
import logging

import numpy as np

from calflow.decode.params import CLASSIFIERS, DecodeParams
from calflow.errors import CalflowInputError

log = logging.getLogger("calflow.decode")

LOGISTIC_C = 1.0              # inverse L2 strength of logistic regression (scikit-learn's default)
BATCH_LOGISTIC = 1_000_000    # trials x neurons x classes up to which logistic refits are solved together


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
