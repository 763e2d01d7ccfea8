"""The classifier's JSON and prediction files (torch-free): ``results/classifier/{group}/metrics.json``
(held-out and training metrics, keys in docs/classify.md) and ``predictions.npz`` (per session the
held-out class probabilities of every frame), written by :func:`write_classifier_outputs` and read by
:func:`read_classifier_metrics` / :func:`read_predictions`. The weights (``model.pt``) are
:func:`calflow.classify.model.save_fold_models`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from calflow.errors import CalflowInputError
from calflow.io import atomic_output, read_json, write_json

METRICS_KEYS = ("group", "sessions")
FIX = "rerun the train_classifier stage (delete the file first)"


def write_classifier_outputs(out_dir: str | Path, metrics: Mapping[str, Any], predictions: Mapping[str, np.ndarray]) -> None:
    """``out_dir/metrics.json`` (the metrics dict) and ``out_dir/predictions.npz`` (compressed), each atomically."""
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", dict(metrics))
    with atomic_output(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as f:  # a file: no ".npz" appended
        np.savez_compressed(f, **predictions)


def read_classifier_metrics(path: str | Path) -> dict[str, Any]:
    """A classifier's metrics.json: ``group``, ``target_ids``, ``sessions.{session}.test`` (accuracy,
    per-target, confusion, ...), ``conditions``, ``control``, ``training``, ..."""
    return read_json(path, what="the classifier's metrics.json", fix=FIX, required=METRICS_KEYS)


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a classifier's predictions.npz, by name."""
    path = Path(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError as err:
        raise CalflowInputError("predictions.npz not found", file=path, fix=FIX) from err
    except (OSError, ValueError) as err:
        raise CalflowInputError(f"cannot read predictions.npz ({err})", file=path, fix=FIX) from err
