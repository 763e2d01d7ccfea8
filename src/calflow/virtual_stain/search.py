"""Budgeted hyperparameter search for the block CNN (optuna TPE, seeded).

The training images are split by image into a fitting part and a validation part (the last
``validation_fraction`` of the training images, at least one); each optuna trial trains on the
first and is scored by the validation blocks' binary cross-entropy (lower is better; ROC AUC is
recorded too). The budget is ``n_trials`` and/or ``timeout_s``. With ``n_trials`` fixed and no
timeout the search is deterministic (TPESampler(seed)); a timeout makes the number of trials
depend on the machine's speed. The best hyperparameters are then trained on all training images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from calflow.io import atomic_output
from calflow.virtual_stain.model import TrainConfig, predict, train_model

log = logging.getLogger(__name__)

#: the searched space: name -> (kind, choices or (low, high))
SPACE: dict[str, tuple[str, Any]] = {
    "channels": ("categorical", [8, 16, 32]),
    "lr": ("log", (5e-4, 1e-2)),
    "weight_decay": ("log", (1e-6, 1e-2)),
    "dropout": ("float", (0.0, 0.5)),
}


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _load_done(path: Path | None, fingerprint: str) -> dict[str, dict]:
    """Trials finished by an earlier (killed) run of the same search, keyed by their parameters."""
    if path is None or not path.exists():
        return {}
    try:
        blob = json.loads(path.read_text())
    except ValueError:  # a damaged record (never a half-written one: written atomically): search again
        log.warning("virtual_stain search: ignoring unreadable %s", path)
        return {}
    return blob.get("trials", {}) if blob.get("fingerprint") == fingerprint else {}


def search(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, base: TrainConfig, *,
           n_trials: int, timeout_s: float | None = None, device: str = "auto",
           record: str | Path | None = None, fingerprint: str = "") -> tuple[TrainConfig, list[dict]]:
    """Best :class:`TrainConfig` (``base`` with searched fields replaced) and every trial's record.

    ``record``: a JSON file where each finished trial's score is kept; a rerun after a kill takes
    those scores instead of training again. The sampler proposes the same parameters either way
    (seeded, same history), so the search ends as an uninterrupted one does."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = Path(record) if record is not None else None
    done = _load_done(record, fingerprint)
    reused = []

    def objective(trial: optuna.Trial) -> float:
        values = {}
        for name, (kind, spec) in SPACE.items():
            if kind == "categorical":
                values[name] = trial.suggest_categorical(name, spec)
            else:
                values[name] = trial.suggest_float(name, *spec, log=kind == "log")
        key = json.dumps(values, sort_keys=True)
        if key in done:
            reused.append(trial.number)
            trial.set_user_attr("val_auc", done[key]["val_auc"])
            return done[key]["val_bce"]
        model = train_model(x_fit, y_fit, replace(base, **values), device)
        p = predict(model, x_val)
        auc, bce = _auc(p, y_val), _bce(p, y_val)
        trial.set_user_attr("val_auc", auc)
        if record is not None:
            done[key] = {"val_bce": bce, "val_auc": auc}
            with atomic_output(record) as tmp:
                tmp.write_text(json.dumps({"fingerprint": fingerprint, "trials": done}))
        return bce

    sampler = optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=min(5, n_trials))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial({"channels": base.channels, "lr": base.lr, "weight_decay": base.weight_decay,
                         "dropout": base.dropout})  # the defaults first: a budget of one trial uses them
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s or None)
    finished = [t for t in study.trials if t.value is not None]
    records = [{"number": t.number, "val_bce": t.value, "val_auc": t.user_attrs.get("val_auc"), **t.params}
               for t in finished]
    best = replace(base, **study.best_params)
    log.info("virtual_stain search: %d trials (%d taken from %s), best %s (val BCE %.4f)", len(finished), len(reused),
             record, study.best_params, study.best_value)
    return best, records
